"""Per-layer sensitivity: how much damage does quantizing one layer alone do?

For each quantized node, a Q/DQ model with only that node quantized (its input
activation and weights, as in the full plan) is run on a few calibration feeds and
its outputs are compared with the FP32 model: the output SQNR of that one layer's
quantization. Noise from independent layers adds roughly in power, so keeping the
lowest-SQNR layers in float removes the largest share of the total error first.
Calibration feeds only: the held-out feeds are for the gate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from edgekit.compare import sqnr_db
from edgekit.feeds import take

from . import graph as g
from . import qdq
from .qdq import QdqPlan


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op: str
    sqnr_db: float          # output SQNR with only this node quantized (higher is better)

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op,
                "sqnr_db": round(self.sqnr_db, 2) if math.isfinite(self.sqnr_db) else None}


def rank_layers(model, plan: QdqPlan, feeds: Iterable[dict[str, np.ndarray]], max_feeds: int = 8,
                nodes: list[str] | None = None, progress: Callable[[int, int], None] | None = None,
                threads: int | None = None) -> list[LayerSensitivity]:
    """Quantized nodes ordered from most to least damaging (lowest output SQNR first)."""
    feeds = take(feeds, max_feeds)
    ref_sess = g.session(model, threads=threads)
    names = {i.name for i in ref_sess.get_inputs()}
    feeds = [{k: v for k, v in f.items() if k in names} for f in feeds]
    ref = np.concatenate([ref_sess.run(None, f)[0].reshape(-1) for f in feeds])
    quantized = [t for t in plan.quantized() if nodes is None or t.node in nodes]
    all_nodes = {t.node for t in plan.targets}
    out = []
    for i, t in enumerate(quantized):
        one = QdqPlan(plan.targets, plan.act_scales, float_nodes=all_nodes - {t.node}, weights=plan.weights,
                      biases=plan.biases, weight_clip=plan.weight_clip, weight_scales=plan.weight_scales,
                      residual=False, unsigned=plan.unsigned, floors=plan.floors,
                      weight_pairs=plan.weight_pairs)
        sess = g.session(qdq.build(model, one), threads=threads)
        test = np.concatenate([sess.run(None, f)[0].reshape(-1) for f in feeds])
        out.append(LayerSensitivity(t.node, t.op, sqnr_db(ref, test)))
        if progress:
            progress(i + 1, len(quantized))
    return sorted(out, key=lambda s: s.sqnr_db)
