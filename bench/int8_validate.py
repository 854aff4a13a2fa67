"""Before/after figures of edgekit's shared Q/DQ INT8 graph on every trained network available.

    python bench/int8_validate.py efficientnet_lite0 efficientnet_lite1 ... --out results.json

Variants (all on the same FP32 ONNX, calibration and held-out feeds, see bench/int8_common.py):

* ``before``: the calibration as it was before issue 19 (range method ``mse``, no
  cross-layer equalization; output-aware rounding and bias correction as before);
* ``after``: the defaults (ranges chosen per tensor by output error; CLE is off by default);
* ``after_fallback`` (``--fallback``): the defaults plus the float fallback the pipeline
  runs for trained weights;
* ``no_floors``: the defaults without the uint8 grids from proven floors (h-swish, SiLU
  outputs held symmetric, as before 2026-12-05; ReLU networks are the same either way).

The float fallback is off in the first two so the figures show what the methods alone do.
Scores: top-1 agreement with FP32, top-1 on confident crops (FP32 softmax top-1 minus top-2
≥ 0.2), cosine and SQNR, and the yardstick (FP32 against itself under ±½ pixel step of noise).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.int8_common import ListFeeds, prepare, run_onnx, scores, yardstick  # noqa: E402
from calibration.quantize import Int8Options, quantize_int8  # noqa: E402
from edgekit.compare import Tolerance  # noqa: E402

VARIANTS = {
    "before": dict(method="mse", equalize=False, fallback=False),
    "after": dict(fallback=False),                 # the defaults: auto ranges, no CLE
    "after_fallback": dict(),
    "cle_only": dict(method="mse", fallback=False),
    "ranges_only": dict(equalize=False, fallback=False),
    "cle_relu6": dict(equalize_relu6=True, absorb_bias=True, fallback=False),
    "no_floors": dict(floors=False, fallback=False),   # h-swish/SiLU outputs on the symmetric grid (before 2026-12-05)
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("networks", nargs="+")
    ap.add_argument("--work", type=Path, default=Path("/tmp/h19quant-val"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--calib", type=int, default=96)
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    for name in args.networks:
        src, cal, held, ref, model, inp, pre = prepare(name, args.work, calib=args.calib)
        row = results.setdefault(name, {})
        row["yardstick"] = yardstick(src.path, held, ref, inp, pre)
        print(name, "yardstick", row["yardstick"], flush=True)
        for v in args.variants.split(","):
            t0 = time.perf_counter()
            opts = Int8Options(**{**dict(tolerance=Tolerance(cosine=0.995, top1=0.98), baselines=False,
                                         stats_feeds=len(cal), cache_dir=args.work / "cache"), **VARIANTS[v]})
            log = []
            art = quantize_int8(src, args.work / name / f"{v}.int8.onnx", cal, ListFeeds(cal[::4], 'calibration subset'), opts, log=log.append)
            s = scores(ref, run_onnx(art.path, held))
            s["seconds"] = round(time.perf_counter() - t0, 1)
            s["float_layers"] = len(art.meta.get("float_layers", []))
            s["equalization"] = art.meta.get("equalization")
            s["range_selection"] = (art.meta.get("range_selection") or {}).get("counts")
            row[v] = s
            print(name, v, {k: s[k] for k in ("top1", "confident_top1", "cosine", "sqnr_db", "float_layers",
                                                "seconds")}, flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
