"""Score an export's ONNX INT8 graphs on photos the export never saw, against issue 19's bar.

    python bench/external_photos.py /tmp/photos            # once: DIR/old4 and DIR/new4
    python bench/int8_unseen.py ARTIFACT_DIR /tmp/photos/old4 /tmp/photos/new4 [--out J]

For each photo folder: 25 crops per photo (edgekit's seeded crops), the reference is the export's
simplified FP32 ONNX, the yardstick that FP32 graph against itself under ±½ pixel step of noise
(calibration/gate.py, as the export's verdict measures it). Each ``*.int8.onnx`` in the folder
(the shared Q/DQ graph, the ONNX Runtime form) is scored: top-1 agreement, top-1 on confident
crops (softmax top-1 − top-2 ≥ 0.2), SQNR; ``meets`` is top-1 ≥ yardstick − 1 point, confident
≥ 99 %, SQNR ≥ 25 dB.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.int8_common import scores  # noqa: E402


def load_input(art: Path):
    from edgekit.specs import InputSpec, Preprocess

    m = json.loads((art / "artifact.json").read_text())
    stage = next(s for s in m["stages"] if s["stage"] == "simplified")
    return Preprocess.from_dict(m["model"]["preprocess"]), InputSpec.from_dict(stage["inputs"][0])


def logits(path: Path, feeds) -> np.ndarray:
    from calibration.gate import run_outputs

    return np.concatenate([next(iter(o.values())) for o in run_outputs(path, feeds)])


def score_folder(art: Path, photos: Path, per_photo: int = 25) -> dict:
    from calibration.gate import yardstick
    from edgekit.feeds import ImageFeeds, crops

    pre, inp = load_input(art)
    feeds = list(ImageFeeds(crops(sorted(photos.iterdir()), per_photo, seed=11), pre, inp, str(photos)))
    sim = next(art.glob("*.sim.onnx"))
    ref = logits(sim, feeds)
    yard = yardstick(sim, feeds, inp, pre)["top1"]
    row = {"photos": str(photos), "crops": len(feeds), "yardstick_top1": round(yard, 4), "graphs": {}}
    for f in sorted(art.glob("*.int8.onnx")):
        s = scores(ref, logits(f, feeds))
        row["confident"] = s["confident_samples"]
        s["meets"] = bool(s["top1"] >= yard - 0.01 - 1e-9 and s["sqnr_db"] is not None and s["sqnr_db"] >= 25.0
                          and (s["confident_top1"] is None or s["confident_top1"] >= 0.99))
        row["graphs"][f.name] = s
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("photos", type=Path, nargs="+")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = [score_folder(args.artifact, d) for d in args.photos]
    for r in rows:
        print(f"{r['photos']}: {r['crops']} crops, yardstick {r['yardstick_top1']:.3f} (bar "
              f"{r['yardstick_top1'] - 0.01:.3f}), {r.get('confident', 0)} confident")
        for name, g in r["graphs"].items():
            print(f"  {name:40s} top-1 {g['top1']:.3f}  confident {g['confident_top1']}  SQNR {g['sqnr_db']:5.2f} dB"
                  f"  {'meets' if g['meets'] else 'MISSES'}")
    if args.out:
        args.out.write_text(json.dumps({"artifact": str(args.artifact), "sets": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
