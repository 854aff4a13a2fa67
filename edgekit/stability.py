"""How stable the FP32 reference is on the held-out samples themselves.

Top-1 agreement on a few hundred crops is only as meaningful as the reference's own
decisions: on a crop whose two best classes are nearly tied, any change flips top-1 —
INT8 rounding, FP16, a different JPEG decoder, or ±½ of one 8-bit pixel step, which every
image pipeline already applies when it rounds to uint8. So for trained weights the pipeline
also scores the FP32 reference against itself with that half-step noise on every input
pixel (seeded, so the figure is reproducible). A reduced-precision stage whose SQNR is at
or above this one is as close to the reference as the reference is to its own input
rounding; its top-1 disagreements fall on samples the reference cannot decide either.

This is reported next to the parity table, never used to loosen a threshold.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np

from .compare import OutputScore
from .contracts import Feed
from .specs import InputSpec, Preprocess

HALF_STEP = 0.5  # noise amplitude in 8-bit pixel steps


def pixel_step(pre: Preprocess, input: InputSpec) -> np.ndarray | None:
    """One 8-bit pixel step in the model's input units, per channel (1 / (255·std)), shaped to
    broadcast over an NCHW batch; None when the input is not an image of ``pre``'s channels."""
    std = np.asarray(pre.std, np.float32).reshape(-1)
    if len(input.shape) != 4 or input.layout.upper() != "NCHW" or std.size not in (1, input.shape[1]) \
            or not np.all(std > 0):
        return None
    step = 1.0 / (255.0 * std)
    return np.broadcast_to(step, (input.shape[1],)).reshape(1, -1, 1, 1).astype(np.float32)


def reference_stability(infer, input: InputSpec, pre: Preprocess, pairs: Iterable[tuple[Feed, dict]],
                        amplitude: float = HALF_STEP, seed: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any] | None:
    """Score ``infer`` (FP32 reference: feed → {output: array}) on each feed plus uniform noise of
    ±``amplitude`` pixel steps against its clean output. ``pairs``: (feed, clean output), as
    :func:`edgekit.parity.reference_outputs` makes them for parity. Returns the first output's
    top-1 agreement, cosine and SQNR, or None when the input is not an image. ``progress(done,
    total)`` after each feed."""
    step = pixel_step(pre, input)
    if step is None:
        return None
    rng = np.random.default_rng(seed)
    score: OutputScore | None = None
    pairs = pairs if hasattr(pairs, "__len__") else list(pairs)
    for i, (feed, ref) in enumerate(pairs):
        x = feed[input.name]
        noisy = {**feed, input.name: (x + rng.uniform(-amplitude, amplitude, x.shape).astype(np.float32) * step)}
        test = infer(noisy)
        name = next(iter(ref))
        score = score or OutputScore(name)
        score.add(ref[name], test[name])
        if progress:
            progress(i + 1, len(pairs))
    if score is None:
        return None
    return {"amplitude_steps": amplitude, "output": score.name, "samples": score.rows or score.samples,
            "top1": score.top1, "cosine": score.cosine,
            "sqnr_db": score.sqnr_db if math.isfinite(score.sqnr_db) else None,  # None: no change at all (JSON)
            "near_ties": score.near_ties}


def describe(s: dict[str, Any]) -> str:
    top1 = f"top1 {s['top1']:.1%}, " if s.get("top1") is not None else ""
    sqnr = "∞" if s.get("sqnr_db") is None else f"{s['sqnr_db']:.1f}"
    return (f"FP32 reference vs itself with ±{s['amplitude_steps']:g} pixel step of input noise: {top1}"
            f"cosine {s['cosine']:.6f}, SQNR {sqnr} dB ({s['samples']} samples)")
