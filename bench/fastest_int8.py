"""Which of edgekit's INT8 artifacts runs fastest on this machine, against ONNX Runtime FP32 (issue 20).

    python bench/fastest_int8.py mobilenet_v3_large --work /tmp/fastest --out bench/results/fastest.json

Exports the model with the real CLI (FP32 ONNX, and INT8 for onnx, openvino and executorch,
each with its defaults), loads every delivered artifact with edgekit's own runner for its
target, and times them all in one interleaved run (``edgekit.bench.timing.time_runners``) on
one feed. Ratios are ONNX Runtime FP32's p50 over each artifact's, per round, median of the
rounds (``paired_ratio``): compare ratios, not milliseconds across sessions or machines.

``--peers`` adds, on the export's own FP32 ONNX and calibrated on the same bundled calibration
photos (``edgekit.feeds.photo_feeds``): ONNX Runtime ``quantize_static`` (QDQ, per-channel,
MinMax) on ONNX Runtime, and NNCF's default ``nncf.quantize`` plus OpenVINO FP32 on OpenVINO
(f32, latency hint, as the openvino target compiles). So this is the export's *delivered*
artifact (after its measured choice between forms) against each runtime's peer, not a form
rebuilt by the bench. With ``--peers`` every artifact is also scored against FP32 on the
bundled held-out crops plus 100 crops of photos from outside the project (top-1, SQNR).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.int8_common import ListFeeds, external_photos  # noqa: E402
from bench.int8_peers import _ort  # noqa: E402
from edgekit.artifact import Manifest  # noqa: E402
from edgekit.bench.timing import paired_ratio, synthetic_feed, time_runners  # noqa: E402

TARGETS = ("onnx", "openvino", "executorch")


def _export(model: str, out: Path, args: list[str]) -> Path:
    """``edgekit export MODEL ARGS --out OUT`` with the real CLI, unless OUT already holds an export."""
    if not (out / "artifact.json").is_file():
        cmd = [sys.executable, "-m", "edgekit.cli.main", "export", model, *args, "--out", str(out), "--force",
               "--no-bench"]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=False)
    return out


def _runner(manifest: Manifest, folder: Path, threads: int):
    """edgekit's runner for the delivered (last) stage of an export folder, opened by its target."""
    from dataclasses import replace

    from edgekit.targets import get_target

    stage = manifest.stages[-1]
    art = replace(stage, path=folder / stage.path.name)
    return stage.stage, get_target(stage.target).open(art, threads=threads)


def _feeds(m32: Manifest):
    """(calibration feeds, held-out feeds: 100 bundled held-out crops, then 100 external ones)."""
    from edgekit.feeds import ImageFeeds, crops, photo_feeds
    from edgekit.specs import Preprocess

    pre = m32.model["preprocess"]
    pre = Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
    inp = m32.stages[-1].inputs[0]
    fs = photo_feeds(pre, inp, heldout=100, calib=96)
    ext = external_photos()
    ext_feeds = ImageFeeds(crops(ext, -(-100 // max(1, len(ext))), seed=11)[:100], pre, inp, "external")
    return ListFeeds(fs.calib, fs.calib.source), ListFeeds(list(fs.heldout) + list(ext_feeds), "held-out + external")


def _peers(fp32_onnx: Path, cal, work: Path, threads: int) -> dict:
    """ONNX Runtime quantize_static (MinMax, per channel, QDQ) and NNCF on the same FP32 ONNX."""
    from types import SimpleNamespace

    import nncf
    import openvino as ov

    from exporters.onnx.runner import OrtRunner
    from exporters.openvino.runner import OpenVinoRunner

    work.mkdir(parents=True, exist_ok=True)
    ort_path = work / "ort_minmax.onnx"
    if not ort_path.is_file():
        _ort(SimpleNamespace(path=fp32_onnx), cal, work.parent, work.name, "minmax")
    fp32 = ov.Core().read_model(str(fp32_onnx))
    q = nncf.quantize(fp32.clone(), nncf.Dataset(list(cal), lambda f: next(iter(f.values()))), subset_size=len(cal))
    return {"onnxruntime quantize_static (peer)": OrtRunner(ort_path, threads=threads),
            "openvino fp32": OpenVinoRunner(fp32, threads=threads, hint="latency"),
            "nncf on openvino (peer)": OpenVinoRunner(q, threads=threads, hint="latency")}


def _accuracy(entered: dict, m32: Manifest, held) -> dict:
    """top-1 agreement and SQNR of every runner against ONNX Runtime FP32 on held-out + external crops."""
    import numpy as np

    name = m32.stages[-1].inputs[0].name
    outs = {k: np.concatenate([next(iter(r.infer({name: next(iter(f.values()))}).values())) for f in held])
            for k, r in entered.items()}
    ref = outs["onnxruntime fp32"]
    res = {}
    for k, y in outs.items():
        agree = ref.argmax(1) == y.argmax(1)
        res[k] = {"top1": float(np.mean(agree)), "top1_bundled_heldout": float(np.mean(agree[:-100])),
                  "top1_external": float(np.mean(agree[-100:])),
                  "sqnr_db": round(float(10 * np.log10((ref ** 2).sum() / max(((ref - y) ** 2).sum(), 1e-30))), 2)}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit-fastest"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("H19_THREADS", "2")))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--export-args", default="", help="extra export options, e.g. '--pretrained'")
    ap.add_argument("--targets", default=",".join(TARGETS), help="INT8 targets to export and time")
    ap.add_argument("--peers", action="store_true", help="add ONNX Runtime quantize_static, NNCF and OpenVINO FP32")
    args = ap.parse_args(argv)
    results = {}
    for model in args.models:
        extra = args.export_args.split()
        fp32 = _export(model, args.work / f"{model}-onnx-fp32", ["--target", "onnx", *extra])
        m32 = Manifest.read(fp32)
        from exporters.onnx.runner import OrtRunner
        runners = {"onnxruntime fp32": OrtRunner(fp32 / m32.stages[-1].path.name, threads=args.threads)}
        for target in args.targets.split(","):
            folder = _export(model, args.work / f"{model}-{target}-int8", ["--target", target, "--int8", *extra])
            try:
                man = Manifest.read(folder)
            except Exception as e:  # noqa: BLE001 - a failed export is a row, not a crash
                print(f"{model} {target}: no artifact ({e})")
                continue
            stage, runner = _runner(man, folder, args.threads)
            runners[f"{target} int8 ({stage})"] = runner
        if args.peers:
            cal, held = _feeds(m32)
            runners.update(_peers(fp32 / m32.stages[-1].path.name, cal, args.work / model, args.threads))
        entered = {k: r.__enter__() for k, r in runners.items()}
        try:
            feed = synthetic_feed(m32.stages[-1].inputs)
            t = time_runners(entered, feed, seconds=args.seconds, rounds=15)
            acc = _accuracy(entered, m32, held) if args.peers else {}
        finally:
            for r in runners.values():
                r.__exit__(None, None, None)
        ref = "onnxruntime fp32"
        row = {k: {**v, **acc.get(k, {}), "x_ort_fp32": paired_ratio(t, ref, k)["ratio"]} for k, v in t.items()}
        if "openvino fp32" in t:
            for k in row:
                row[k]["x_ov_fp32"] = paired_ratio(t, "openvino fp32", k)["ratio"]
        for k, v in row.items():
            a = (f"  top-1 {v['top1']:.1%} (external {v['top1_external']:.0%}) / {v['sqnr_db']:.1f} dB"
                 if "top1" in v else "")
            print(f"{model:24s} {k:36s} p50 {v['p50_ms']:7.3f} ms  {v['x_ort_fp32']:.2f}x ORT FP32{a}")
        results[model] = row
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
