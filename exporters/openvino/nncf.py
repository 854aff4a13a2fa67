"""NNCF post-training quantization for the OpenVINO target, and its mixed-precision fallback.

The recipe (:data:`RECIPE`) is the result of measurements on the pretrained
EfficientNet-Lite0 against its FP32 outputs on 200 held-out photo crops (docs/openvino.md):

* NNCF's defaults: top-1 agreement 77.5%, cosine 0.952.
* ``overflow_fix=DISABLE`` (8-bit instead of 7-bit weights; VNNI/AMX CPUs do not saturate; quant.py
  turns the fix on where the CPU lacks VNNI)
  and full ``BiasCorrection`` (``fast_bias_correction=False``): 86.0%, 0.9675.
* **per-tensor activations** (``activations_quantization_params.per_channel=False``): 95.5%,
  0.9936. NNCF quantizes depthwise-convolution inputs per channel by default; those
  per-channel ranges fit the calibration images so tightly that other photos hit
  channels that were quiet during calibration and are clipped (100x more clipped values
  on held-out photos than on calibration photos). One per-tensor range per ReLU6 output
  ([0, 6]) never clips.

What remains is closed by restoring the most sensitive layers to floating point
(:func:`restore_ladder`): every quantized layer is ranked by how much the logits' SQNR on
calibration feeds rises when that layer alone is restored (its FakeQuantize inputs bypassed,
its FP32 bias put back, as NNCF's accuracy control does), then the top 1, 2, 4, ... layers
are restored until the held-out gate passes. The result keeps weights as FakeQuantize until
the end, then compresses them to INT8 constants with the same OpenVINO transformation NNCF
uses (``compress_quantize_weights_transformation``).
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgekit.compare import Comparison, Tolerance
from edgekit.contracts import Feed
from edgekit.errors import ExportError, backend_errors, require

from .runner import OpenVinoRunner

LAYER_TYPES = ("Convolution", "GroupConvolution", "MatMul")
RANK_FEEDS = 16        # calibration feeds used to rank layer sensitivity
MAX_FP_FRACTION = 0.25  # at most this share of the quantized units goes back to floating point


@dataclass(frozen=True)
class NncfRecipe:
    """The ``nncf.quantize`` arguments edgekit uses (recorded in the manifest)."""

    preset: str = "performance"               # symmetric activations: the CPU's INT8 kernels' format
    fast_bias_correction: bool = False        # full BiasCorrection
    overflow_fix: str = "disable"             # 8-bit weights everywhere (no 7-bit first layer)
    per_channel_activations: bool = False     # per-tensor activations (see the module docstring)
    subset_size: int = 300                    # calibration samples (capped by the feeds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def kwargs(self, nncf, n_samples: int) -> dict[str, Any]:
        from nncf import AdvancedQuantizationParameters, OverflowFix, QuantizationPreset
        from nncf.quantization.advanced_parameters import QuantizationParameters

        adv = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix(self.overflow_fix),
            activations_quantization_params=QuantizationParameters(per_channel=self.per_channel_activations),
            backend_params={"compress_weights": False})  # keep FakeQuantize on weights: restorable
        return {"preset": QuantizationPreset(self.preset), "fast_bias_correction": self.fast_bias_correction,
                "subset_size": max(1, min(self.subset_size, n_samples)), "advanced_parameters": adv}


RECIPE = NncfRecipe()


@contextlib.contextmanager
def quiet_nncf():
    """NNCF prints progress bars and INFO lines; keep them out of edgekit's console."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logger.setLevel(level)


def input_transform(names: Sequence[str]) -> Callable[[Feed], Any]:
    names = tuple(names)
    if len(names) == 1:
        name = names[0]
        return lambda feed: np.asarray(feed[name], dtype=np.float32)
    return lambda feed: {n: np.asarray(feed[n], dtype=np.float32) for n in names}


def quantize(fp32_model, calib: Iterable[Feed], names: Sequence[str], recipe: NncfRecipe = RECIPE):
    """``nncf.quantize`` with ``recipe``; weights stay FakeQuantize (see :func:`compress_weights`)."""
    nncf = require("nncf", "openvino", "OpenVINO INT8 (NNCF)")
    feeds = list(calib)
    if not feeds:
        raise ExportError("openvino", "no calibration feeds for NNCF")
    with backend_errors("openvino", "nncf.quantize failed", hint=None, with_type=False), quiet_nncf():
        return nncf.quantize(fp32_model.clone(), nncf.Dataset(feeds, input_transform(names)),
                             **recipe.kwargs(nncf, len(feeds)))


def compress_weights(model) -> None:
    """FakeQuantize(FP32 constant) → INT8 constant + dequantization, in place (what NNCF does
    itself when ``compress_weights`` is on)."""
    from openvino._offline_transformations import compress_quantize_weights_transformation

    compress_quantize_weights_transformation(model)


# -- scoring -------------------------------------------------------------------------------------
def outputs_of(model, feeds: Sequence[Feed], inputs, outputs, threads) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` on ``feeds``, OpenVINO CPU at f32 (the gate's arithmetic)."""
    with OpenVinoRunner(model, inputs, outputs, "CPU", threads, "latency", "f32") as r:
        return [r.infer(f) for f in feeds]


def score(model, pairs, inputs, outputs, tol: Tolerance, threads, stage: str = "openvino-int8") -> Comparison:
    return score_outputs(pairs, outputs_of(model, [f for f, _ in pairs], inputs, outputs, threads), tol, stage)


def score_outputs(pairs, outs: list[dict], tol: Tolerance, stage: str = "openvino-int8") -> Comparison:
    """:func:`score` of outputs already computed (``outs``, one per pair)."""
    comp = Comparison(stage=stage, runner="openvino-CPU", precision="int8", tolerance=tol,
                      note="INT8 model vs FP32 model, OpenVINO CPU at f32")
    for (_, ref), out in zip(pairs, outs):
        comp.add(ref, out)
    return comp


def sqnr(refs: list[dict], outs: list[dict]) -> float:
    r = np.concatenate([np.asarray(next(iter(x.values())), np.float64).ravel() for x in refs])
    o = np.concatenate([np.asarray(next(iter(x.values())), np.float64).ravel() for x in outs])
    noise = float(((r - o) ** 2).sum())
    return 200.0 if noise == 0 else 10.0 * np.log10(max(float((r * r).sum()), 1e-30) / noise)


# -- mixed precision -----------------------------------------------------------------------------
def quantized_layers(model) -> dict[str, dict[str, list[str]]]:
    """Restorable units: layer name → {"fq": FakeQuantize nodes on its inputs, "bias": its bias
    Add nodes}, plus every activation FakeQuantize that feeds no layer (residual Add inputs,
    pooling) as a unit of its own, named after itself."""
    layers: dict[str, dict[str, list[str]]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            if not any(t.get_node().get_type_name() in LAYER_TYPES for t in op.output(0).get_target_inputs()):
                layers[op.get_friendly_name()] = {"fq": [op.get_friendly_name()], "bias": []}
            continue
        if op.get_type_name() not in LAYER_TYPES:
            continue
        fqs = [v.get_node().get_friendly_name() for v in op.input_values()
               if v.get_node().get_type_name() == "FakeQuantize"]
        if not fqs:
            continue
        bias = [t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()
                if t.get_node().get_type_name() == "Add"
                and t.get_node().input_value(1).get_node().get_type_name() == "Constant"]
        layers[op.get_friendly_name()] = {"fq": fqs, "bias": bias}
    return layers


def restore(qmodel, fp32_model, layers: Sequence[str], table: dict | None = None):
    """A copy of ``qmodel`` with ``layers`` back in floating point: their FakeQuantize inputs
    bypassed and their FP32 biases (undoing bias correction) restored."""
    table = table or quantized_layers(qmodel)
    fq, bias = set(), set()
    for name in layers:
        fq.update(table[name]["fq"])
        bias.update(table[name]["bias"])
    fp_bias = {op.get_friendly_name(): op for op in fp32_model.get_ops()
               if op.get_type_name() == "Add" and op.get_friendly_name() in bias}
    m = qmodel.clone()
    for op in m.get_ops():
        name = op.get_friendly_name()
        if name in fq and op.get_type_name() == "FakeQuantize":
            op.output(0).replace(op.input_value(0))
        elif name in fp_bias:
            op.input(1).replace_source_output(fp_bias[name].input_value(1))
    return m


def rank_layers(qmodel, fp32_model, feeds: Sequence[Feed], inputs, outputs, threads) -> list[tuple[str, float]]:
    """Layers by the logits-SQNR gain (dB) of restoring each one alone, largest first."""
    table = quantized_layers(qmodel)
    refs = outputs_of(fp32_model, feeds, inputs, outputs, threads)
    base = sqnr(refs, outputs_of(qmodel, feeds, inputs, outputs, threads))
    gains = [(name, sqnr(refs, outputs_of(restore(qmodel, fp32_model, [name], table), feeds, inputs, outputs,
                                           threads)) - base) for name in table]
    return sorted(gains, key=lambda g: -g[1])


def restore_ladder(qmodel, fp32_model, calib: Iterable[Feed], pairs, inputs, outputs, tol: Tolerance, threads,
                   max_fraction: float = MAX_FP_FRACTION, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Restore the top 1, 2, 4, ... ranked units (at most ``max_fraction`` of them) until the
    gate passes; the cap is tried first, so a gate that no allowed rung can pass costs one try.

    Returns {"model", "comparison", "restored", "ranking", "steps"}: the first passing rung, or,
    when none passes within the cap, the fully quantized ``qmodel`` with its failing comparison
    (an INT8 model that is mostly floating point would defeat its purpose; the gate failure is
    reported instead).
    """
    feeds = list(calib)
    step = max(1, len(feeds) // RANK_FEEDS)
    ranking = rank_layers(qmodel, fp32_model, feeds[::step][:RANK_FEEDS], inputs, outputs, threads)
    table = quantized_layers(qmodel)
    names = [n for n, _ in ranking]
    cap = max(1, int(len(names) * max_fraction))
    rungs, k = [], 1
    while k < cap:
        rungs.append(k)
        k *= 2
    steps: list[dict[str, Any]] = []

    def rung(k: int):
        model = restore(qmodel, fp32_model, names[:k], table)
        comp = score(model, pairs, inputs, outputs, tol, threads)
        s = comp.primary()
        steps.append({"restored": k, "top1": s.top1, "cosine": round(s.cosine, 6), "passed": comp.passed})
        log(f"  {k} of {len(names)} units in floating point: {brief(comp)}")
        return model, comp

    # the cap first: when even it fails, the smaller rungs need not be tried
    best = rung(cap)
    if best[1].passed:
        for k in rungs:
            model, comp = rung(k)
            if comp.passed:
                best = (model, comp)
                cap = k
                break
        return {"model": best[0], "comparison": best[1], "restored": names[:cap], "ranking": ranking,
                "steps": steps}
    comp = score(qmodel, pairs, inputs, outputs, tol, threads)
    return {"model": qmodel, "comparison": comp, "restored": [], "ranking": ranking, "steps": steps}


def brief(comp: Comparison) -> str:
    s = comp.primary()
    top1 = f"top-1 {s.top1:.1%}, " if s.top1 is not None else ""
    return f"{top1}cosine {s.cosine:.5f}, {'pass' if comp.passed else 'FAIL'}"

