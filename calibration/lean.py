"""A cheaper float set at about the same accuracy: the fallback's second pass (issue 20).

The fallback (calibration/quantize.py) keeps layers in float damage-first: the layer whose
quantization alone hurts most goes first. That finds a passing set in few steps, but says nothing
about what each float layer costs at run time, and the most damaging layers of a mobile network
are often its widest tensors. Pretrained EfficientNet-Lite0 keeps its first depthwise convolution,
the stem, a 56×56 projection and expansion and one 14×14 layer in float; on ONNX Runtime each costs
a dequantize, a float convolution, a quantize and two layout changes on up to 0.8 M elements, and
its INT8 form ran at 0.77–1.10× FP32's latency where Lite1 and Lite2 ran at 0.40–0.70×.

So, once the damage-first set has passed the gate, :func:`search` looks for a cheaper one: it
takes layers in order of error removed per unit of run-time cost (:func:`float_costs`) and adopts
the first prefix whose Q/DQ graph passes the same gate and reads within :data:`MAX_SQNR_LOSS_DB` of
the damage-first set's SQNR against FP32 on the gate's samples (a pass on near-ties bought with
accuracy is not the same artifact). The search stops at as many layers as the damage-first set
kept, and before a set that would cost more than :data:`MAX_COST_SHARE` of its float cost.
Otherwise the damage-first set stays. A cost-aware order on its own was tried first (2026-12-05):
it made Lite0 2.05× faster than FP32 instead of 1.09×, but on torchvision's MobileNetV2 it spent
the whole float budget on cheap late layers that gained 0.1 dB each and never passed. As a second
pass bounded by the first pass's result it can only deliver a set that passed, is cheaper, and is
within :data:`MAX_SQNR_LOSS_DB` as accurate (measured: docs/calibration.md, step 6a).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import graph as g

# How much a float activation element costs against a float multiply-accumulate. On ONNX Runtime's
# CPU kernels (and OpenVINO's) a layer left in float between INT8 layers pays a dequantize of its
# input, a quantize of its output and the NCHW↔NHWC reorders around the float convolution: memory
# passes of a few ns per element, against the float convolution's extra time over the INT8 one at
# a fraction of a ns per multiply-accumulate. 64 is that ratio on this project's CPUs (EfficientNet-
# Lite0's FP32 ONNX: 5.3 ms for 0.4 G multiply-accumulates; a DQ + Q + two reorders of its 0.4 M-
# element 112×112 tensors: 0.2–0.3 ms).
ELEMENT_WEIGHT = 64.0
# A float weight is read at run time as 4 bytes instead of 1, and makes the artifact 3 bytes larger:
# a quarter of an activation element's price (an element costs several 4-byte passes). Without it a
# network's classifier (1.3 M weights, 40 dB alone) looks free, and Lite0's INT8 file grew from
# 4.7 to 8.4 MB.
WEIGHT_WEIGHT = ELEMENT_WEIGHT / 4
MAX_COST_SHARE = 0.75     # the cheaper set must save at least a quarter of the float cost
MAX_SQNR_LOSS_DB = 0.25   # and read at most this much lower SQNR on the gate's samples


def settings() -> dict:
    """The constants that decide the search (part of the calibration cache key)."""
    return {"element_weight": ELEMENT_WEIGHT, "weight_weight": WEIGHT_WEIGHT, "max_cost_share": MAX_COST_SHARE,
            "max_sqnr_loss_db": MAX_SQNR_LOSS_DB}


@dataclass(frozen=True)
class Lean:
    """The outcome of :func:`search`: the float set kept and why."""

    floats: set[str]
    adopted: bool
    reason: str
    steps: list[dict]
    cost: float
    first_cost: float

    def to_dict(self) -> dict:
        return {"adopted": self.adopted, "reason": self.reason, "float_layers": sorted(self.floats),
                "float_cost": round(self.cost, 1), "damage_first_float_cost": round(self.first_cost, 1),
                "steps": self.steps, **settings()}


def float_costs(model, nodes: Sequence[str]) -> dict[str, float]:
    """A run-time cost proxy for keeping each of ``nodes`` in float, in millions:
    multiply-accumulates + :data:`ELEMENT_WEIGHT` × (input + output elements) + :data:`WEIGHT_WEIGHT` ×
    weights."""
    dims = g.inferred_dims(model)
    for o in model.graph.output:  # inferred_dims holds inner tensors and inputs; a head writes an output
        dims.setdefault(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim])
    inits = g.initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    out = {}
    for name in nodes:
        n = by_name[name]
        elems_in = int(np.prod(dims.get(n.input[0]) or [0]))
        elems_out = int(np.prod(dims.get(n.output[0]) or [0]))
        w = inits[n.input[1]].dims
        if n.op_type in ("Conv", "ConvTranspose"):
            macs = elems_out * int(np.prod(w[1:]))
        else:  # Gemm/MatMul at batch 1: every weight once
            macs = int(np.prod(w))
        out[name] = (macs + ELEMENT_WEIGHT * (elems_in + elems_out) + WEIGHT_WEIGHT * int(np.prod(w))) / 1e6
    return out


def order(ranking, costs: dict[str, float]) -> list:
    """``ranking`` (LayerSensitivity, damage-first) re-ordered by error power removed per unit of
    cost: 10^(−SQNR/10) / cost (error from independent layers adds roughly in power)."""
    def value(s) -> float:
        sq = s.sqnr_db if np.isfinite(s.sqnr_db) else 200.0
        return 10 ** (-sq / 10) / max(costs.get(s.node, 0.0), 1e-6)
    return sorted(ranking, key=value, reverse=True)


def search(ranking, first: set[str], first_sqnr: float, costs: dict[str, float],
           score: Callable[[set[str]], tuple[object, object]], log: Callable[[str], None]) -> tuple[Lean, object]:
    """Try the cost-aware prefix of ``ranking`` against the damage-first float set ``first`` (which
    passed at ``first_sqnr`` dB). ``score(floats)`` builds and gates that float set and returns
    (file, comparison). Returns the :class:`Lean` outcome and the (file, comparison) of the set it
    adopted (None when the damage-first set stays)."""
    first_cost = sum(costs.get(n, 0.0) for n in first)
    budget = len(first)
    floats: set[str] = set()
    steps: list[dict] = []

    def keep(reason: str) -> tuple[Lean, None]:
        log(f"cheaper float set: none ({reason}); keeping the damage-first set")
        return Lean(set(first), False, reason, steps, first_cost, first_cost), None

    if budget <= 1:
        return keep("the damage-first set has one layer")
    for s in order(ranking, costs):
        if len(floats) >= budget:
            return keep(f"no passing set of at most {budget} layers")
        if floats | {s.node} == set(first):
            return keep("the cost-aware order gives the same set")
        cost = sum(costs.get(n, 0.0) for n in floats | {s.node})
        if cost > MAX_COST_SHARE * first_cost:
            return keep(f"the next set would cost {cost:.0f} of {first_cost:.0f} (more than "
                        f"{MAX_COST_SHARE:.0%})")
        floats.add(s.node)
        result = score(set(floats))
        comp = result[1]
        sq = comp.primary().sqnr_db
        steps.append({"float": s.node, "float_cost": round(cost, 1), "passed": bool(comp),
                      "sqnr_db": round(float(sq), 2) if np.isfinite(sq) else None,
                      "top1": comp.primary().top1})
        log(f"  cheaper float set, + {s.node} (cost {cost:.0f} of {first_cost:.0f}): "
            f"{'pass' if comp else 'fail'}, SQNR {sq:.2f} dB")
        if comp and sq >= first_sqnr - MAX_SQNR_LOSS_DB:
            why = (f"{len(floats)} float layers costing {cost:.0f} instead of {len(first)} costing "
                   f"{first_cost:.0f}; SQNR {sq:.2f} dB against {first_sqnr:.2f} dB")
            log(f"cheaper float set adopted: {why}")
            return Lean(set(floats), True, why, steps, cost, first_cost), result
    return keep("the ranking ran out")
