"""Headroom for the classifier's input: its range on photos the calibration never saw.

The last layer (the Gemm/MatMul/Conv whose output is the network's output) reads the pooled
features. Clipping them moves the logits directly, and no later layer absorbs it. Chosen on the
calibration crops, their range is a sample maximum that other photos exceed. Measured on the fine-tuned
ResNet-18 from outside the project (docs/calibration-measured.md, session 41): per-crop maxima of its
classifier input reach 7.6 on the 256 calibration crops, 7.4 on the bundled held-out crops and
11.9 on eight photos from outside the project. At the calibration maximum the shared graph read
37.8 dB against FP32 on the held-out crops and 26.8 / 28.6 dB on the two sets of unseen photos,
top-1 agreement 76 / 85 %. With the threshold at 1.6× it read 36.9 dB and 30.9 / 31.7 dB.

So where the activation before the pooling is unbounded (ReLU, SiLU, h-swish: ResNet, DenseNet,
ShuffleNet, EfficientNet-B, MobileNetV3), the threshold is at least a tail bound of the per-crop
maxima over the calibration crops, ``exp(mean + TAIL_SD · sd)`` of their logarithms: a log-normal
tail that about 3 crops in 100,000 exceed. Where the graph bounds it (a ReLU6 before the pooling:
MobileNetV2, EfficientNet-Lite), the calibrated threshold stays: the bound already limits how far
other photos can go (torchvision's MobileNetV2: calibrated 4.7, unseen maxima 5.5, bound 6), and
widening it to 6 moved those networks by 0.1 dB or less, on held-out and unseen photos alike.
Only for ``--calib-method auto``: an explicit method is taken as asked.
"""
from __future__ import annotations

import math

import numpy as np

from edgekit.feeds import take

from . import graph as g
from .bounds import PASS
from .ranges import activations, clip_bound

TAIL_SD = 4.0
MIN_SAMPLES = 16      # fewer crops do not estimate a spread
MAX_SAMPLES = 64      # crops run to measure the per-crop maxima (one FP32 pass each)
TAIL_OPS = ("Softmax", "LogSoftmax", "Identity", "Flatten", "Reshape", "Squeeze", "Dropout")


def classifier_inputs(model, targets) -> list[str]:
    """The activations read by the layers whose output reaches a graph output through reshapes or a
    softmax only."""
    outputs = {o.name for o in model.graph.output}
    cons = g.consumers(model)
    nodes = {n.name: n for n in model.graph.node}

    def reaches_output(t: str, depth: int = 0) -> bool:
        if t in outputs:
            return True
        users = cons.get(t, [])
        return depth < 8 and bool(users) and all(u.op_type in TAIL_OPS and reaches_output(u.output[0], depth + 1)
                                                 for u in users)
    return sorted({q.activation for q in targets if reaches_output(nodes[q.node].output[0])})


def proven_max(model, tensor: str) -> float | None:
    """An upper bound the graph proves: a ``Clip`` upstream through ops that keep their input's
    range (pooling, reshapes), or None."""
    prod = g.producers(model)
    while tensor in prod and prod[tensor].op_type in PASS:
        tensor = prod[tensor].input[0]
    return clip_bound(model, tensor)


def tail_bound(peaks: np.ndarray) -> float | None:
    """exp(mean + TAIL_SD · sd) of the log per-crop maxima; None with too few positive ones."""
    p = np.asarray(peaks, dtype=np.float64)
    p = p[p > 0]
    if len(p) < MIN_SAMPLES:
        return None
    logs = np.log(p)
    return float(math.exp(logs.mean() + TAIL_SD * logs.std()))


def widen(model, targets, picked: dict[str, float], feeds) -> dict[str, dict]:
    """Raise the threshold in ``picked`` of each classifier input the graph does not bound to its tail
    bound; returns what was done per tensor, for the manifest."""
    tensors = [t for t in classifier_inputs(model, targets) if t in picked and proven_max(model, t) is None]
    if not tensors:
        return {}
    acts = activations(model, tensors, take(feeds, MAX_SAMPLES))
    out = {}
    for t in tensors:
        a = acts[t]
        bound = tail_bound(np.abs(a.reshape(a.shape[0], -1)).max(axis=1))
        if bound is None:
            continue
        final = max(picked[t], bound)
        out[t] = {"calibrated": round(picked[t], 4), "tail_bound": round(bound, 4), "crops": int(a.shape[0]),
                  "threshold": round(final, 4)}
        picked[t] = final
    return out
