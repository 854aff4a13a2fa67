"""edgekit's INT8 against its peers, side by side, on the same FP32 graph and the same photos.

    python bench/int8_peers.py efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 --out peers.json

For each trained network (bench/int8_common.py: the FP32 ONNX, the calibration feeds from the
bundled photos' calibration split, the held-out feeds from the bundled held-out split plus
photos from outside the project):

* ``edgekit``: the shared Q/DQ graph of ``calibration.quantize_int8`` with its defaults (the
  float fallback on, as the pipeline runs it for trained weights), on ONNX Runtime;
  ``edgekit_ort``: the ONNX Runtime form written from it (``exporters.onnx.ort_form``);
* ``ort_minmax`` / ``ort_entropy`` / ``ort_percentile``: ONNX Runtime ``quantize_static``,
  QDQ format, per-channel weights, its default activation type, on ONNX Runtime;
* ``nncf``: ``nncf.quantize`` on the OpenVINO model read from the same ONNX (default preset),
  run by OpenVINO on CPU;
* ``edgekit_ov``: the shared Q/DQ graph as the ``openvino`` target calibrates it on this CPU
  (paired weights where it lacks VNNI, ``--ov-int8-weights auto``), run by OpenVINO on CPU;
* ``nncf_overflow_fix``: NNCF with its overflow fix on every layer (7-bit weights), the NNCF form
  that computes exactly on x86 CPUs without VNNI (docs/openvino.md), run by OpenVINO on CPU.
  Where the CPU lacks VNNI, ``edgekit`` (exact on ONNX Runtime) and ``nncf`` (which saturates
  there) do not describe what OpenVINO runs; these two do.

JSON per network: the yardstick (FP32 against itself under ±½ pixel step of input noise) and,
per method, top-1 agreement with FP32, top-1 on confident crops (FP32 softmax top-1 minus
top-2 ≥ 0.2), cosine, SQNR, seconds. ``--methods`` picks a subset. ``--latency`` adds, per
network, each method's batch-1 latency on its runtime and its speed against FP32 on the same
runtime (bench/int8_speed.py): the ONNX files on ONNX Runtime, edgekit's shared graph and NNCF's
model on OpenVINO.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.int8_common import ListFeeds, prepare, run_onnx, scores, yardstick  # noqa: E402

METHODS = ("edgekit", "edgekit_ort", "ort_minmax", "ort_entropy", "ort_percentile", "nncf", "edgekit_ov",
           "nncf_overflow_fix")


def _edgekit(src, cal, held, work: Path, name: str, inp, pre, openvino: bool = False) -> Path:
    """edgekit's shared Q/DQ graph; ``openvino``: calibrated as the openvino target does on this CPU."""
    from calibration.gate import yardstick as gate_yardstick
    from calibration.quantize import Int8Options, quantize_int8
    from edgekit.contracts import ExportRequest
    from edgekit.targets import get_target
    from edgekit.verdict import calibration_target, quantization_tolerance

    # the target's own rule (paired weights where this CPU lacks VNNI), not a copy of it
    target_opts = get_target("openvino").calibration_options_for(
        ExportRequest(model=name, target="openvino", precision="int8")) if openvino else {}
    path = work / name / ("edgekit.ov.int8.onnx" if openvino else "edgekit.int8.onnx")
    # the gate reads the calibration side only: held-out photos stay unseen by every method
    gate_feeds = ListFeeds(cal[::4], "calibration subset")
    yard = gate_yardstick(src.path, gate_feeds, inp, pre)
    # the export's own policy for trained weights (edgekit/verdict.py), as the pipeline sets it
    opts = Int8Options(tolerance=calibration_target(quantization_tolerance("int8", True)), baselines=False,
                       stats_feeds=len(cal), cache_dir=work / "cache", **target_opts,
                       yardstick_top1=None if not yard or yard.get("top1") is None else round(yard["top1"], 4))
    quantize_int8(src, path, cal, gate_feeds, opts, log=lambda m: None)
    return path


def _edgekit_ort(src, cal, work: Path, name: str) -> Path:
    from exporters.onnx.ort_form import build_ort_int8

    path = work / name / "edgekit.ort.int8.onnx"
    build_ort_int8(work / name / "edgekit.int8.onnx", path, cal)
    return path


class _Reader:
    def __init__(self, feeds, input_name: str):
        self.feeds, self.name, self.i = feeds, input_name, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        f = self.feeds[self.i]
        self.i += 1
        return {self.name: next(iter(f.values()))}

    def rewind(self):
        self.i = 0


def _ort(src, cal, work: Path, name: str, method: str) -> Path:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    inp = ort.InferenceSession(str(src.path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    path = work / name / f"ort_{method}.onnx"
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    quantize_static(str(src.path), str(path), _Reader(cal, inp), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=calib)
    return path


def _nncf(src, cal, held, keep: dict | None = None, overflow_fix: bool = False) -> np.ndarray:
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(src.path))
    ds = nncf.Dataset(list(cal), lambda f: next(iter(f.values())))
    extra = {"advanced_parameters": nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)} \
        if overflow_fix else {}
    q = nncf.quantize(model, ds, subset_size=len(cal), **extra)
    if keep is not None:
        keep["nncf_overflow_fix" if overflow_fix else "nncf"] = q
    return _run_openvino(q, held)


def _run_openvino(model, held) -> np.ndarray:
    """Logits of an OpenVINO model (or a file it reads) on CPU, compiled as the openvino target runs
    its IRs (bench/int8_speed.py: the latency hint, f32 for the non-INT8 layers)."""
    from bench.int8_speed import OpenVinoModel

    with OpenVinoModel(model) as m:
        return np.concatenate([m.infer(f)["output"].copy() for f in held])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("networks", nargs="+")
    ap.add_argument("--work", type=Path, default=Path("/tmp/h19quant-val"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--calib", type=int, default=96)
    ap.add_argument("--latency", action="store_true", help="also time every method on its runtime (bench/int8_speed.py)")
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.networks:
        src, cal, held, ref, _, inp, pre = prepare(name, args.work, calib=args.calib)
        row = results.setdefault(name, {})
        row["yardstick"] = yardstick(src.path, held, ref, inp, pre)
        row["calibration_samples"], row["heldout_samples"] = len(cal), len(held)
        print(name, "yardstick", row["yardstick"], flush=True)
        onnx_paths, ov_models = {"fp32": src.path}, {"fp32": src.path}
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            try:
                if method in ("nncf", "nncf_overflow_fix"):
                    test = _nncf(src, cal, held, ov_models, overflow_fix=method == "nncf_overflow_fix")
                elif method == "edgekit_ov":
                    path = _edgekit(src, cal, held, args.work, name, inp, pre, openvino=True)
                    test = _run_openvino(path, held)
                    ov_models["edgekit_ov"] = path
                else:
                    path = {"edgekit": lambda: _edgekit(src, cal, held, args.work, name, inp, pre),
                            "edgekit_ort": lambda: _edgekit_ort(src, cal, args.work, name)}.get(
                        method, lambda: _ort(src, cal, args.work, name, method.removeprefix("ort_")))()
                    test = run_onnx(path, held)
                    onnx_paths[method] = path
                    if method == "edgekit":
                        ov_models["edgekit"] = path  # the shared graph: the openvino target's IR with VNNI
                s = scores(ref, test)
            except Exception as exc:  # a peer that fails on a network is reported, not fatal
                s = {"error": f"{type(exc).__name__}: {exc}"}
            s["seconds"] = round(time.perf_counter() - t0, 1)
            row[method] = s
            print(name, method, s, flush=True)
            args.out.write_text(json.dumps(results, indent=1))
        if args.latency:
            from bench.int8_speed import latency

            row["latency"] = latency(onnx_paths, ov_models, held[0])
            print(name, "latency", row["latency"], flush=True)
            args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
