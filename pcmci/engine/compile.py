"""A ``torch.compile``d module that cannot kill a run: on a compile failure it falls back, once per stage.

``FallbackCompiled(module)`` is called like ``module``. Its stages, tried in order on the same call:

1. ``torch.compile(module)`` (Inductor's defaults);
2. ``torch.compile(module, options={"triton.coalesce_tiling_analysis": False})``: Inductor without its coalescing
   tiling analysis, whose ``tiling_utils.solve_for_tiling`` asserted on the paper model's train step (torch 2.11,
   H200; upstream pytorch#191603, fixed by pytorch#191605);
3. ``module`` itself, eager.

A compile failure (``BackendCompilerFailed`` or ``InductorError`` raised by a call) resets Dynamo and repeats the
same call under the next stage; once a later stage has run a call, one warning names the failure(s) and the stage
in use. Calls run with ``force_non_lazy_backward_lowering``, so the backward graph is compiled with the forward and
its failures also surface in the forward call, before any gradient has been accumulated: the repeated call is
exact. Used by ``pcmci train``, ``pcmci bench train`` and the profiler's compiled train step.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# (name, Inductor options); None = eager
STAGES: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("inductor", {}),
    ("inductor without coalescing tiling analysis", {"triton.coalesce_tiling_analysis": False}),
    ("eager", None),
)
COMPILE_ERRORS = (torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.InductorError)


def _cause(err: BaseException) -> str:
    """The exception type and first line of a compile failure, e.g. ``InductorError: AssertionError: ...``."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:240]}"


def _eager_backward_lowering() -> contextlib.AbstractContextManager:
    """Compile the backward graph together with the forward (``torch._functorch.config``), where this torch has
    the switch; without it a backward compile failure surfaces in ``backward()`` and is not caught here."""
    config = torch._functorch.config
    if hasattr(config, "force_non_lazy_backward_lowering"):
        return config.patch(force_non_lazy_backward_lowering=True)
    return contextlib.nullcontext()


class FallbackCompiled:
    """``module`` compiled, falling back stage by stage (``STAGES``) when a call fails to compile.

    ``stage`` is the name of the stage in use; ``failures`` the causes of the stages given up, in order.
    """

    def __init__(self, module: nn.Module, stages: tuple[tuple[str, dict[str, Any] | None], ...] = STAGES) -> None:
        if not stages or stages[-1][1] is not None:
            raise ValueError("FallbackCompiled: the last stage must be eager (options None)")
        self.module = module
        self.stages = stages
        self.index = 0
        self.failures: list[str] = []
        self._warned = 0
        self._call = self._build()

    @property
    def stage(self) -> str:
        return self.stages[self.index][0]

    def _build(self) -> Callable[..., Any]:
        options = self.stages[self.index][1]
        if options is None:
            return self.module
        return torch.compile(self.module, options=options) if options else torch.compile(self.module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            eager = self.stages[self.index][1] is None
            try:
                with contextlib.nullcontext() if eager else _eager_backward_lowering():
                    out = self._call(*args, **kwargs)
            except COMPILE_ERRORS as err:
                if self.index + 1 >= len(self.stages):
                    raise
                self.failures.append(f"{self.stage}: {_cause(err)}")
                torch._dynamo.reset()
                self.index += 1
                self._call = self._build()
                continue
            if len(self.failures) > self._warned:
                self._warned = len(self.failures)
                log.warning("torch.compile failed (%s); running %s", "; ".join(self.failures), self.stage)
            return out
