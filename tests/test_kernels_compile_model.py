"""The tiny model (both fused ops inside) under torch.compile(fullgraph=True): no graph break, eager-equal.

``aot_eager`` traces forward and backward through Dynamo and AOTAutograd as Inductor does (the fused ops' fake
kernels, autograd formulas and functionalization included) and runs the traced graphs eagerly; Inductor's own C++
code generation for the whole model (about 90 kernels per graph, 2-3 minutes on a 2-core CPU with a cold cache) is
left out. Inductor's lowering of the fused ops is checked on the ops alone (``test_kernels_compile.py``)."""
import torch


def test_tiny_model_compiles_fullgraph_and_matches_eager(tiny_model):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny_model().eval()  # eval: no dropout, so eager and compiled see the same computation
    frames = torch.rand(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(fn):
        out = fn(frames)
        loss = out["logits"].square().sum()
        return out["logits"].detach(), torch.autograd.grad(loss, params)

    logits, grads = loss_and_grads(model)
    logits_c, grads_c = loss_and_grads(torch.compile(model, fullgraph=True, backend="aot_eager"))
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    # the traced graphs run the same fp32 CPU kernels as eager, in another order where AOTAutograd reorders:
    # reassociation only, as for Inductor before
    torch.testing.assert_close(logits_c, logits, atol=1e-4, rtol=1e-4)
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, atol=1e-4, rtol=1e-3)
