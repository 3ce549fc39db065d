"""The paper's published figures: its budget check and the comparison table (published vs measured)."""
from __future__ import annotations

from typing import Any

BUDGET = {"params": 211e6, "flops": 650e9}
BUDGET_TOLERANCE = 0.05
# (model, GFLOPs, params) as published in the PCMCI paper's efficiency table
PUBLISHED = (("PCMCI", 650e9, 211e6), ("HierarQ", 37877e9, 7881e6), ("MA-LMM", 29063e9, 7526e6))


def budget_check(params: float, flops: float) -> dict[str, Any]:
    """Measured params / FLOPs against the paper's 211M / 650 GFLOPs, within ``BUDGET_TOLERANCE``."""
    out: dict[str, Any] = {"tolerance": BUDGET_TOLERANCE}
    for key, measured in (("params", params), ("flops", flops)):
        rel = measured / BUDGET[key] - 1
        out[key] = {"measured": measured, "paper": BUDGET[key], "rel_diff": rel, "ok": abs(rel) <= BUDGET_TOLERANCE}
    out["ok"] = out["params"]["ok"] and out["flops"]["ok"]
    return out


def comparison(name: str, params: float, flops: float) -> list[dict[str, Any]]:
    """Rows: this model (measured) and the published ones, each with its FLOPs / params ratio to this model."""
    rows = [{"model": f"this model ({name})", "source": "measured", "flops": flops, "params": params}]
    rows += [{"model": m, "source": "published", "flops": f, "params": p} for m, f, p in PUBLISHED]
    for row in rows:
        row["flops_ratio"] = row["flops"] / flops
        row["params_ratio"] = row["params"] / params
    return rows
