"""OpenVINO FP32 vs INT8 IR latency for the focus models, torch eager FP32 in the same run.

    .venv/bin/python bench/openvino_int8.py --models mobilenet_v3_large efficientnet_lite0 \
        --threads 2 --seconds 4 --out bench/results/openvino.json

Each model is exported with ``edgekit.pipeline.export`` (the code path of ``edgekit export``,
parity and the pipeline's own latency step off) at FP32 and at INT8 for every ``--routes``
entry (``auto`` is the default route). The runners are then opened side by side and timed
with ``edgekit.bench.timing.measure`` in interleaved rounds (``--rounds``), so that load from
other processes falls on every runner alike; percentiles are taken over the pooled samples.
Batch 1, ``--threads`` threads for every runtime. Writes one JSON file.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source tree
    sys.path.insert(0, str(ROOT))

SCHEMA = "edgekit.bench.openvino-int8/1"


def focus_models() -> list[str]:
    from edgekit.models import list_specs

    return [s.name for s in list_specs() if s.focus]


def export(model: str, precision: str, route: str | None, args, work: Path, console):
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import export as run_export

    options = {"ov_hint": "latency"}
    if route:
        options["int8_route"] = route
    req = ExportRequest(model=model, target="openvino", precision=precision, out=work / f"{model}-{precision}-{route}",
                        pretrained=args.pretrained and _has_pretrained(model), device=args.device,
                        threads=args.threads, parity=False, bench=False, options=options,
                        input_shape=(1, 3, args.input_size, args.input_size) if args.input_size else None)
    t0 = time.perf_counter()
    res = run_export(req, console)
    return res.manifest.final, time.perf_counter() - t0


def _has_pretrained(model: str) -> bool:
    from edgekit.models import get_spec

    return bool(get_spec(model).pretrained)


def bench_model(model: str, args, work: Path, console) -> dict:
    import torch

    from edgekit.bench.timing import paired_ratio, synthetic_feed, time_runners
    from edgekit.targets import get_target
    from edgekit.torch_runner import TorchRunner

    target = get_target("openvino")
    row: dict = {"model": model, "exports": {}}
    stages = {}
    fp32, secs = export(model, "fp32", None, args, work, console)
    stages["openvino_fp32"] = fp32
    row["exports"]["fp32"] = {"seconds": round(secs, 1), "size_mb": round(fp32.size_bytes / 1e6, 2)}
    for route in args.routes:
        art, secs = export(model, "int8", route, args, work, console)
        key = f"openvino_int8_{route}"
        stages[key] = art
        i8 = art.meta.get("int8", {})
        row["exports"][f"int8_{route}"] = {"seconds": round(secs, 1), "size_mb": round(art.size_bytes / 1e6, 2),
                                           "route": i8.get("route"), "gate_before": i8.get("gate_before"),
                                           "gate_after": i8.get("gate_after"), "fp_layers": i8.get("fp_layers"),
                                           "latency_guard": i8.get("latency_guard")}
    from edgekit.bench.run import torch_reference

    _, module, inputs = torch_reference(model, fp32.inputs[0].shape, 1, None,
                                        args.pretrained and _has_pretrained(model))
    feed = synthetic_feed(inputs)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        runners = {"torch_fp32": stack.enter_context(TorchRunner(module, inputs, threads=args.threads))}
        for k, art in stages.items():
            runners[k] = stack.enter_context(target.open(art, device=args.device, threads=args.threads,
                                                         hint="latency"))
        lat = time_runners(runners, feed, seconds=args.seconds * len(runners), warmup=args.warmup,
                               rounds=args.rounds)
    row["latency"] = lat
    row["runner"] = {k: r.name for k, r in runners.items()}
    row["input_shape"] = list(inputs[0].shape)
    row["speedup"] = {}
    for route in args.routes:  # speed-ups: medians of the per-round ratios (timing.paired_ratio)
        i8 = f"openvino_int8_{route}"
        row["speedup"][f"int8_{route}_vs_openvino_fp32"] = paired_ratio(lat, "openvino_fp32", i8)["ratio"]
        row["speedup"][f"int8_{route}_vs_torch_fp32"] = paired_ratio(lat, "torch_fp32", i8)["ratio"]
    row["speedup"]["openvino_fp32_vs_torch_fp32"] = paired_ratio(lat, "torch_fp32", "openvino_fp32")["ratio"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help="zoo models (default: the focus models)")
    p.add_argument("--routes", nargs="+", default=["auto"], choices=("auto", "nncf", "qdq"),
                   help="INT8 routes to build and time (default: auto = the default route)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per runner (pooled over rounds)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="CPU")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="use packaged pretrained weights where a model has them (default on)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "openvino.json")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from edgekit.bench.device import fingerprint
    from edgekit.console import Console

    console = Console(quiet=args.quiet)
    models = args.models or focus_models()
    result = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": fingerprint(),
              "settings": {"threads": args.threads, "batch": 1, "seconds": args.seconds, "rounds": args.rounds,
                           "warmup": args.warmup, "device": args.device, "routes": args.routes,
                           "pretrained": args.pretrained, "input_size": args.input_size},
              "models": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-ov-bench-") as tmp:
        for m in models:
            console.info(f"== {m}")
            try:
                row = bench_model(m, args, Path(tmp), console)
            except Exception as exc:  # one model's failure is a row, not the end of the run
                row = {"model": m, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
            result["models"].append(row)
            args.out.write_text(json.dumps(result, indent=2, default=str))
            if "latency" in row:
                lat = row["latency"]
                console.info("   " + ", ".join(f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in lat.items()))
    console.print(str(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
