"""FP32 ONNX → INT8 Q/DQ ONNX, calibrated on real feeds and gated on held-out ones.

Steps (each measured on EfficientNet-Lite0 with ImageNet weights, see
docs/calibration.md):

1. activation statistics of the FP32 model on the calibration feeds (cached);
2. per-tensor symmetric activation ranges by the chosen method;
3. per-channel symmetric weights rounded for the layer's output (GPTQ-style, checked
   photo-wise against over-fitting) and bias correction of each layer's mean output
   shift (:mod:`calibration.weights`);
4. the Q/DQ graph in TensorRT's explicit-quantization form (:mod:`calibration.qdq`);
5. the accuracy gate against the FP32 model on the held-out feeds; when it fails,
   the layers whose quantization alone hurts most (:mod:`calibration.sensitivity`)
   are kept in float one by one until it passes or the float budget is spent, then up to two
   more while SQNR is short of a margin past the floor (:mod:`calibration.fallback`).

The result is cached by (source sha256, feeds fingerprints, method, options).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edgekit.artifact import Artifact, tool_versions
from edgekit.compare import Comparison, Tolerance
from edgekit.errors import CalibrationError, UsageError
from edgekit.feeds import feeds_fingerprint, feeds_info, take

from . import gate as gate_mod
from . import graph as g
from . import equalize as eq
from . import bounds, fallback, methods, qdq, ranges, spares
from . import headroom as headroom_mod
from .cache import CalibrationCache, make_key
from .weights import calibrate_weights
from .sensitivity import rank_layers
from .stats import collect

Feeds = Iterable[dict[str, np.ndarray]]
# 3: accumulator-grid biases, SQNR target; 4/5: uint8 activations, their list; 6: uint8 from a proven floor; 7: exact ORT kernels (edgekit/ort_options.py)
CACHE_VERSION = 7
RESULT_VERSION = 11  # calibrated graphs; 9: the classifier input's headroom (headroom.py); 10: the SQNR margin (fallback.py); 11: its first pass as a spare
DEFAULT_METHOD = "auto"


@dataclass
class Int8Options:
    """How to calibrate and what the result must achieve.

    ``tolerance`` is the gate; with ``gate_top1=False`` (untrained weights, whose top-1
    class means nothing) top-1 agreement is reported but not gated.
    ``max_float_fraction`` bounds the weighted layers (Conv/Gemm/MatMul) the fallback
    may keep in float."""

    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    tolerance: Tolerance = field(default_factory=gate_mod.gate_tolerance)
    gate_top1: bool = True
    max_float_fraction: float = 0.35
    yardstick_top1: float | None = None  # FP32's own top-1 stability on the held-out feeds
    cache_dir: Path | None = None
    use_cache: bool = True
    baselines: bool = True
    gptq: bool = True
    bias_correction: bool = True
    residual: bool = True
    fallback: bool = True
    stats_feeds: int = 256
    weight_feeds: int = 32
    ls_target: bool = True
    sensitivity_feeds: int = 8
    equalize: bool = False          # CLE: measured no gain on the ReLU6 families (docs/calibration.md)
    equalize_feeds: int = 32
    equalize_relu6: bool = False    # data-aware ReLU6 scaling: exact on calibration only (equalize.py)
    absorb_bias: bool = False       # likewise
    range_feeds: int = 8
    unsigned: bool = True           # uint8 activations where the graph proves them >= 0 (qdq.py); False: TensorRT
    floors: bool = True             # with unsigned: uint8 + zero point where the graph proves a floor < 0 (bounds.py)
    spare_steps: int = 0            # when the gate passes: also write the next N fallback steps (spares.py)
    lean: bool = True               # after a passing fallback, look for a cheaper float set (lean.py)
    paired_weights: bool = False    # neighbours that u8×s8 kernels pair held to qdq.PAIR_BUDGET (x86 without VNNI)
    add_inputs: bool = False        # quantize a layer's output where a residual Add reads it (XNNPACK requantizes it)

    def __post_init__(self):
        methods.check_method(self.method)
        if not 0 <= self.max_float_fraction < 1:
            raise UsageError(f"max_float_fraction must be in [0, 1), got {self.max_float_fraction}")

    @property
    def gate(self) -> Tolerance:
        return gate_mod.without_top1(self.tolerance, self.gate_top1)

    def key(self) -> dict[str, Any]:
        """The options that change the result (the cache key)."""
        d = asdict(self)
        for k in ("cache_dir", "use_cache", "baselines"):
            d.pop(k)
        d["tolerance"] = self.gate.to_dict()
        if self.lean:
            from . import lean

            d["lean"] = lean.settings()
        if self.fallback:
            d["margin"] = fallback.settings()
        return d

    def to_dict(self) -> dict[str, Any]:
        d = self.key()
        d["baselines"] = self.baselines
        return d


def quantize_int8(src: Artifact, path: Path, calib: Feeds, heldout: Feeds, options: Int8Options | None = None,
                  log: Callable[[str], None] = print,
                  progress: Callable[[str, int, int], None] | None = None,
                  spare_dir: Path | None = None) -> Artifact:
    """Calibrate ``src`` (an FP32 ONNX stage) and write the Q/DQ ONNX to ``path``. With
    ``options.spare_steps`` and ``spare_dir``: the next fallback steps past a passed gate go to
    ``spare_dir`` too (:mod:`calibration.spares`)."""
    options = options or Int8Options()
    path = Path(path)
    t_start = time.perf_counter()
    calib_fp, held_fp = feeds_fingerprint(calib), feeds_fingerprint(heldout)
    cache = CalibrationCache(options.cache_dir)
    src_sha = src.sha256 or src.path.name
    key = make_key("int8", CACHE_VERSION, RESULT_VERSION, src_sha, calib_fp, held_fp, options.key())
    if options.use_cache:
        hit = cache.lookup(key)
        if hit is not None:
            model_path, meta = hit
            log(f"reusing calibration cache {model_path.parent} (same model, feeds, method and options)")
            shutil.copyfile(model_path, path)
            spares.restore(meta, model_path.parent, spare_dir)
            meta["cache"] = {"hit": True, "key": key, "dir": str(model_path.parent)}
            return _artifact(src, path, meta)

    model = g.load(src.path)
    g.ensure_node_names(model)
    original, equalized = model, None
    if options.equalize:
        t0 = time.perf_counter()
        model, rep = eq.equalize(model, take(calib, options.equalize_feeds), relu6=options.equalize_relu6,
                                 absorb=options.absorb_bias)
        equalized = rep.to_dict()
        log(f"cross-layer equalization: {rep.pairs} conv pairs ({rep.clipped_pairs} behind ReLU6), "
            f"{rep.scaled_channels} channels scaled, {rep.clip_pinned_channels} ReLU6 channels kept (they reach "
            f"the clip), {rep.absorbed_channels} biases absorbed")
    targets = g.quant_targets(model)
    if not targets:
        raise CalibrationError(f"{src.path.name} has no Conv/Gemm/MatMul with constant weights to quantize")
    tensors = sorted({t.activation for t in targets})
    extra = add_inputs(model, targets) if options.add_inputs else []
    calib_info, held_info = feeds_info(calib), feeds_info(heldout)
    log(f"calibrating {len(targets)} layers ({options.method}) on {calib_info['samples']} samples "
        f"({calib_info['source'] or 'feeds'}); gate on {held_info['samples']} held-out samples")
    timings: dict[str, float] = {}

    # 1. statistics (cached by model, calibration feeds and the tensors observed: ONNX Runtime fuses
    # differently when more tensors are graph outputs, and the last bits of the statistics move with
    # it; a calibration reusing ExecuTorch's superset read torchvision's MobileNetV2 `ort` form at
    # 91.0 % instead of 95.5 %, so the result depended on which target was exported first)
    t0 = time.perf_counter()
    observed = sorted({*tensors, *extra})
    stats_key = make_key("stats", CACHE_VERSION, src_sha, calib_fp, options.stats_feeds, options.equalize,
                         options.equalize_feeds, observed)
    stats = cache.load_stats(stats_key) if options.use_cache else None
    if stats is not None and set(observed) == set(stats):
        log(f"reusing calibration statistics from {cache.root / 'stats' / stats_key}")
    else:
        stats = collect(model, observed, take(calib, options.stats_feeds),
                        progress=_step(progress, "activation statistics"))
        if options.use_cache:
            cache.store_stats(stats_key, stats)
    timings["statistics"] = time.perf_counter() - t0

    # 2-3. ranges, weight rounding, bias correction
    t0 = time.perf_counter()
    range_choices: dict[str, str] = {}
    unsigned, floors = _unsigned(model, observed, options)
    if options.method == "auto":
        picked, range_choices = ranges.select(model, targets, stats, calib, max_feeds=options.range_feeds,
                                              unsigned=unsigned, floors=floors)
        signed = {t for t, c in range_choices.items() if c.endswith(ranges.SIGNED)}
    else:
        picked = {t: methods.threshold(stats[t], options.method, options.percentile) for t in tensors}
        signed = {t for t, f in floors.items() if not methods.floor_helps(picked[t], f)}
    for t in extra:  # read by an Add only: no consumer layer to score candidates at, the MSE threshold
        picked.setdefault(t, methods.threshold(stats[t], "mse" if options.method == "auto" else options.method,
                                               options.percentile))
    headroom = headroom_mod.widen(model, targets, picked, calib) if options.method == "auto" else {}
    unsigned, floors = unsigned - signed, {t: f for t, f in floors.items() if t not in signed}
    act_scales = {t: methods.scale_for(th, t in unsigned, floors.get(t, 0.0)) for t, th in picked.items()}
    plan = qdq.QdqPlan(targets, act_scales, residual=options.residual, unsigned=unsigned, floors=floors, add_inputs=set(extra),
                       weight_pairs=qdq.paired_weights(model, targets) if options.paired_weights else {})
    choices = calibrate_weights(model, plan, calib, max_feeds=options.weight_feeds, gptq=options.gptq,
                                bias_correction=options.bias_correction, ls_target=options.ls_target,
                                progress=_step(progress, "weight statistics"),
                                round_progress=_step(progress, "weight rounding"))
    timings["weights"] = time.perf_counter() - t0

    # 4-5. gate, fallback
    work = Path(tempfile.mkdtemp(prefix="edgekit-int8-"))
    try:
        t0 = time.perf_counter()
        reference = gate_mod.run_outputs(src.path, heldout)
        source = held_info["source"]

        def score(p: qdq.QdqPlan, name: str, tol: Tolerance | None = None, base=None) -> tuple[Path, Comparison]:
            f = work / f"{name}.onnx"
            g.onnx_mod().save(qdq.build(model if base is None else base, p), str(f))
            return f, gate_mod.score(f, heldout, reference, tol or options.gate, source=source,
                                     yardstick_top1=options.yardstick_top1)

        first = score(plan, "candidate")
        log(f"INT8 gate before fallback: {gate_mod.describe(first[1])} -> {'pass' if first[1] else 'fail'}")
        max_float = int(math.floor(options.max_float_fraction * len(targets) + 1e-9))
        def rank():
            return rank_layers(model, plan, calib, max_feeds=options.sensitivity_feeds,
                               progress=_step(progress, "layer sensitivity"))

        outcome = fallback.run(model, plan, rank, score, first, options, max_float, log)
        candidate, final, ranking = outcome.candidate, outcome.final, outcome.ranking
        spare = []
        if final and options.fallback and options.spare_steps > 0 and spare_dir is not None:
            ranking = ranking or rank()
            spare = spares.write(model, plan, ranking, options.spare_steps, max_float, spare_dir)
            if outcome.first_pass is not None:
                spare.append(spares.before_margin(model, plan, outcome.first_pass, spare_dir))
            if spare:
                log(f"spare fallback steps (used if a target's artifact misses the bar): "
                    f"{', '.join(d['float_added'] or 'the step before the margin' for d in spare)}")
        timings["gate"] = time.perf_counter() - t0

        baselines = {}
        if options.baselines:
            t0 = time.perf_counter()
            # naive means the source model as it is: no equalization, plain min/max
            raw = stats if original is model else collect(original, tensors, take(calib, options.stats_feeds),
                                                          histograms=False)
            for name, per_channel in (("per_tensor_minmax", False), ("per_channel_minmax", True)):
                naive = qdq.QdqPlan(targets, _scales(raw, tensors, "minmax", 100.0), residual=options.residual,
                                    per_channel=per_channel)
                baselines[name] = gate_mod.summary(score(naive, name, options.gate, original)[1])
                log(f"baseline {name.replace('_', ' ')}: {_brief(baselines[name])}")
            timings["baselines"] = time.perf_counter() - t0
        shutil.copyfile(candidate, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    meta = _meta(plan, options, choices, first[1], final, outcome.steps, ranking, baselines,
                 calib_info, held_info, calib_fp, held_fp)
    meta["equalization"] = equalized
    if outcome.lean is not None:
        meta["cheaper_float_set"] = outcome.lean.to_dict()
    if outcome.margin is not None:
        meta["gate"]["margin"] = outcome.margin
    if plan.add_inputs:
        meta["add_inputs"] = sorted(plan.add_inputs)
    if spare:
        meta["spares"] = spare
    if range_choices:
        counts: dict[str, int] = {}
        for c in range_choices.values():
            counts[c] = counts.get(c, 0) + 1
        meta["range_selection"] = {"counts": counts, "per_tensor": dict(sorted(range_choices.items()))}
    if headroom:
        meta["classifier_headroom"] = headroom
    timings["total"] = time.perf_counter() - t_start
    meta["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    meta["cache"] = {"hit": False, "key": key, "dir": str(cache.root / "result" / key) if options.use_cache else None}
    if options.use_cache:
        cache.store(key, path, meta, {d["file"]: spare_dir / d["file"] for d in spare})
    return _artifact(src, path, meta)


def add_inputs(model, targets) -> list[str]:
    """Outputs of weighted layers that an ``Add`` reads (a projection's output before its residual
    add): ExecuTorch's XNNPACK quantizes them, the shared graph keeps them float unless asked."""
    weighted = {t.node for t in targets}
    prod = g.producers(model)
    out = set()
    for node in model.graph.node:
        if node.op_type == "Add":
            out.update(i for i in node.input if i in prod and prod[i].name in weighted)
    return sorted(out)


def _unsigned(model, tensors: list[str], options: Int8Options) -> tuple[set[str], dict[str, float]]:
    """The activations held as uint8, and the floors (< 0) of those that can go negative."""
    if not options.unsigned:
        return set(), {}
    if not options.floors:
        return g.nonnegative_tensors(model) & set(tensors), {}
    wanted = set(tensors)
    lows = {t: b for t, b in bounds.lower_bounds(model).items() if t in wanted}
    return set(lows), {t: b for t, b in lows.items() if b < 0}


def _scales(stats, tensors, method: str, percentile: float) -> dict[str, float]:
    return {t: methods.scale_for(methods.threshold(stats[t], method, percentile)) for t in tensors}


def _step(progress, name):
    if progress is None:
        return None
    return lambda i, n: progress(name, i, n)


def _brief(s: dict) -> str:
    top1 = f"top-1 {s['top1']:.1%}, " if s.get("top1") is not None else ""
    return f"{top1}cosine {s['cosine']:.4f}, SQNR {s['sqnr_db']} dB"


def _meta(plan, options, choices, first, final, steps, ranking, baselines,
          calib_info, held_info, calib_fp, held_fp) -> dict[str, Any]:
    gptq_layers = sorted(n for n, c in choices.items() if c.startswith("gptq"))
    rounding = {}
    for c in choices.values():
        kind = c.split("(")[0]
        rounding[kind] = rounding.get(kind, 0) + 1
    return {
        "method": options.method,
        "options": options.to_dict(),
        "scheme": {"weights": "int8 symmetric per-channel (axis: output channels)", "activations":
                   "per-tensor: uint8 where never negative (zero point 0) or above a proven floor (zero point "
                   "from the floor), else int8 (zero point 0)" if plan.unsigned
                   else "int8 symmetric per-tensor", "zero_point": "0 unless activation_floors", "qdq_placement": "inputs of Conv/Gemm/MatMul",
                   "residual_add_inputs_quantized": options.residual, "bias": "float"},
        "calibration": {**calib_info, "fingerprint": calib_fp, "statistics_samples":
                        min(calib_info["samples"], options.stats_feeds)},
        "heldout": {**held_info, "fingerprint": held_fp},
        "layers": plan.layer_counts(),
        "float_layers": sorted(plan.float_nodes),
        "weight_rounding": {"counts": rounding, "gptq_layers": gptq_layers, "bias_corrected": len(plan.biases)},
        "activation_ranges": {t: round(s * (methods.UQMAX - plan.zero_point(t) if t in plan.unsigned else methods.QMAX), 6)
                              for t, s in sorted(plan.act_scales.items())},
        **plan.activation_lists(),
        "gate": {"tolerance": options.gate.to_dict(), "top1_gated": options.gate.top1 is not None,
                 "passed": bool(final), "before": gate_mod.summary(first), "after": gate_mod.summary(final),
                 "fallback": steps},
        "sensitivity": [s.to_dict() for s in ranking[:20]],
        "baselines": baselines,
    }


def _artifact(src: Artifact, path: Path, meta: dict[str, Any]) -> Artifact:
    return Artifact(path=path, stage="qdq", format="onnx", precision="int8", target="onnx", inputs=src.inputs,
                    outputs=src.outputs, parent=src.sha256, meta=meta, tools=tool_versions("onnx", "onnxruntime"))

