"""The reference-stability yardstick: FP32 against itself under ±½ pixel step of input noise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgekit.specs import InputSpec, Preprocess
from edgekit.stability import describe, pixel_step, reference_stability

IMG = InputSpec("input", (1, 3, 8, 8))


def test_pixel_step_is_one_8bit_level_in_model_units():
    lite = Preprocess(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    assert np.allclose(pixel_step(lite, IMG).ravel(), 1 / 128)
    imagenet = Preprocess()
    assert np.allclose(pixel_step(imagenet, IMG).ravel(), 1 / (255 * np.asarray(imagenet.std)))
    assert pixel_step(imagenet, IMG).shape == (1, 3, 1, 1)
    assert pixel_step(imagenet, InputSpec("tokens", (1, 16))) is None
    gray = InputSpec("input", (1, 1, 28, 28))
    assert np.allclose(pixel_step(Preprocess(mean=(0.1307,), std=(0.3081,), channels=1), gray), 1 / (255 * 0.3081))
    assert pixel_step(imagenet, gray) is None  # three stds for one channel: not this preprocessing's image


def _two_class(feed):
    """Logits (m, -m) with m the image mean: a sample whose mean is ~0 is a near-tie."""
    m = feed["input"].mean(axis=(1, 2, 3))
    return {"output": np.stack([m, -m], axis=1)}


def _feeds(means):
    rng = np.random.default_rng(1)
    out = []
    for m in means:
        x = rng.standard_normal(IMG.shape).astype(np.float32)
        out.append({"input": x - x.mean() + np.float32(m)})
    return out


def _pairs(infer, feeds):
    """(feed, clean output), as parity's reference_outputs makes them."""
    return [(f, infer(f)) for f in feeds]


def test_noise_flips_only_the_references_own_near_ties():
    pre = Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3)   # one pixel step = 1/127.5
    decided, tied = [1.0] * 30, [0.0] * 10                # mean 1.0 never flips; mean 0 is a coin toss
    clean = reference_stability(_two_class, IMG, pre, _pairs(_two_class, _feeds(decided)), amplitude=0.5)
    assert clean["top1"] == 1.0 and clean["samples"] == 30 and clean["near_ties"] == 0
    s = reference_stability(_two_class, IMG, pre, _pairs(_two_class, _feeds(decided + tied)), amplitude=0.5)
    assert s["near_ties"] == 10 and 0.75 + 1e-9 < s["top1"] < 1.0   # some, never all, of the 10 ties flip
    assert 0.99 < s["cosine"] < 1.0 and math.isfinite(s["sqnr_db"])
    silent = reference_stability(_two_class, IMG, pre, _pairs(_two_class, _feeds(decided + tied)), amplitude=0.0)
    assert silent["top1"] == 1.0 and silent["sqnr_db"] is None  # identical outputs: no finite SQNR (JSON-safe)
    assert "SQNR ∞ dB" in describe(silent) and "top1 100.0%" in describe(silent)


def test_same_seed_same_figure():
    pre = Preprocess()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    infer = lambda f: {"output": net(torch.from_numpy(f["input"])).detach().numpy()}  # noqa: E731
    feeds = _pairs(infer, _feeds([0.0] * 8))
    a, b = (reference_stability(infer, IMG, pre, feeds) for _ in range(2))
    assert a == b and a["sqnr_db"] > 20
    assert reference_stability(infer, IMG, pre, feeds, seed=1)["sqnr_db"] != pytest.approx(a["sqnr_db"], abs=0)


def test_reference_passes_report_progress_per_sample():
    """The torch reference and the noisy pass take tens of seconds on a large network at 224 px:
    each reports after every sample (the export prints it every 5 s), and reporting changes nothing."""
    from edgekit.parity import reference_outputs

    class Runner:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def infer(self, feed):
            return _two_class(feed)

    feeds = _feeds([1.0, -1.0, 0.5])
    seen = []
    pairs = reference_outputs(Runner(), feeds, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and len(pairs) == 3
    pre = Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3)
    seen.clear()
    s = reference_stability(_two_class, IMG, pre, pairs, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and s == reference_stability(_two_class, IMG, pre, pairs)
