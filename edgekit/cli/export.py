"""``edgekit export MODEL --target T [--int8|--fp16]``: build, check, measure."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.specs import guard_seconds_option, int_option, parse_shape, parse_tolerances

MAX_BATCH = 4096
MAX_THREADS = 1024
FP16_SLOW = 0.95   # below this speed-up against FP32, the FP16 note explains why


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model to a target, check parity, measure latency",
        description="Export MODEL (a zoo name such as mobilenet_v3, or path/file.py:factory, or "
                    "package.module:factory) to TARGET, compare every stage with PyTorch on held-out real "
                    "photos, and write the artifact folder atomically. Exit 0 pass, 1 parity failure "
                    "(artifact still written), 2 error (nothing written).")
    p.add_argument("model", help="zoo model or alias (see 'edgekit models'), or FILE.py:factory / module:factory")
    p.add_argument("--target", "-t", default="onnx", help="target (see 'edgekit targets'); default onnx")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None)
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="same as --precision fp16")
    prec.add_argument("--int8", dest="precision", action="store_const", const="int8", help="same as --precision int8")
    p.add_argument("--out", "-o", type=Path, help="artifact folder (default artifacts/MODEL-TARGET-PRECISION)")
    p.add_argument("--force", action="store_true",
                   help="replace a previous edgekit artifact in --out (only the files its manifest lists)")
    p.add_argument("--batch", type=int_option("--batch", 1, MAX_BATCH), default=1,
                   help="static batch size (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a symbolic batch dimension")
    p.add_argument("--input-shape", type=parse_shape, help="NxCxHxW, e.g. 1x3x224x224 (overrides --batch)")
    p.add_argument("--opset", type=int_option("--opset", 1), help="ONNX opset (default 18; the written file is "
                   "checked to carry the opset asked for)")
    p.add_argument("--weights", type=Path, help="state-dict checkpoint: torch.save (loaded with weights_only=True) or safetensors")
    p.add_argument("--pretrained", action="store_true", help="use the pretrained weights that ship in a package")
    p.add_argument("--calib", type=Path, help="folder of images (or a .npy/.npz array of preprocessed NxCxHxW samples) "
                                                   "for INT8 calibration and held-out parity")
    p.add_argument("--calib-method", choices=("auto", "mse", "minmax", "percentile", "entropy"),
                   help="INT8 activation range method (default auto: per tensor, the candidate with the least output error)")
    p.add_argument("--calib-samples", type=int_option("--calib-samples", 1),
                   help="INT8 calibration samples: crops of the calibration photos, or rows of a --calib array "
                        "(default 256)")
    p.add_argument("--samples", type=int_option("--samples", 1),
                   help="held-out parity samples (default 200 for fp16/int8, 32 for fp32; checked against memory)")
    p.add_argument("--no-simplify", dest="simplify", action="store_false", help="skip the ONNX simplifier")
    p.add_argument("--simplifier", choices=("onnxsim", "onnxslim"), default="onnxsim")
    p.add_argument("--device", help="runtime device for the target (e.g. CPU, GPU, NPU for OpenVINO)")
    p.add_argument("--threads", type=int_option("--threads", 1, MAX_THREADS),
                   help="runtime threads for parity and latency")
    p.add_argument("--dry-run", action="store_true", help="run every stage up to the target build, then stop")
    p.add_argument("--no-parity", dest="parity", action="store_false", help="skip the parity check")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the latency measurement")
    p.add_argument("--guard-seconds", type=guard_seconds_option(),
                   help="seconds the INT8 form choice and latency guard time each runner (default 1.5, or "
                        "$EDGEKIT_GUARD_SECONDS); shorter is quicker and noisier")
    p.add_argument("--tol", action="append", default=[], metavar="METRIC=VALUE",
                   help="override a parity threshold: max_abs, cosine, sqnr_db, top1 (repeatable)")
    _add_target_options(p)
    from edgekit.cli.arm import add_arch_options

    add_arch_options(p)
    p.set_defaults(func=run)


def _add_target_options(p: argparse.ArgumentParser) -> None:
    from edgekit.targets import list_targets

    seen = {a.dest for a in p._actions}
    for t in list_targets():
        group = None
        for o in t.options:
            if o.dest in seen:
                continue
            seen.add(o.dest)
            group = group or p.add_argument_group(f"{t.name} options")
            kw = {"dest": o.dest, "help": o.help, "default": o.default}
            if o.action:
                kw["action"] = o.action
            else:
                # a count of calibration samples below 1 is refused like --samples
                kw["type"] = int_option(o.flag, 1) if o.type is int and o.dest.endswith("samples") else o.type
                if o.choices:
                    kw["choices"] = o.choices
            group.add_argument(o.flag, **kw)


def _tolerances(items: list[str]) -> dict[str, float]:
    return parse_tolerances(items)


def request_from_args(args: argparse.Namespace):
    from edgekit.contracts import ExportRequest
    from edgekit.targets import get_target

    target = get_target(args.target)
    options = {o.dest: getattr(args, o.dest, o.default) for o in target.options}
    return ExportRequest(model=args.model, target=target.name, precision=args.precision or "fp32", out=args.out,
                         batch=args.batch, dynamic_batch=args.dynamic_batch, input_shape=args.input_shape,
                         opset=args.opset, weights=args.weights, pretrained=args.pretrained, calib=args.calib,
                         calib_method=args.calib_method, simplify=args.simplify, simplifier=args.simplifier,
                         device=args.device, threads=args.threads, dry_run=args.dry_run, parity=args.parity,
                         bench=args.bench, samples=args.samples, calib_samples=args.calib_samples,
                         options=options, force=args.force,
                         tolerance=_tolerances(args.tol), arch=args.arch, arm_cpus=tuple(args.arm_cpus or ()),
                         arm_samples=args.arm_samples, guard_seconds=args.guard_seconds)


def run(args: argparse.Namespace) -> int:
    from edgekit.console import Console
    from edgekit.pipeline import export

    console = Console(quiet=args.quiet)
    result = export(request_from_args(args), console)
    print_summary(result, console)
    return result.exit_code


def print_summary(result, console) -> None:
    from edgekit.console import fmt_num, human_bytes
    from edgekit.parity import parity_table

    m = result.manifest
    console.print(f"\n{m.model['name']} → {m.request['target']} ({m.request['precision']})  [{result.out}]")
    rows = [[s.stage, s.path.name, s.format, s.precision, s.meta.get("nodes", "-"), human_bytes(s.size_bytes)]
            for s in m.stages]
    console.table(["stage", "file", "format", "precision", "nodes", "size"], rows)
    if result.lint:
        errs = sum(p.get("level") == "error" for p in result.lint)
        console.print(f"\nlint ({m.request['target']}): {errs} error(s), {len(result.lint) - errs} warning(s)")
        for p in result.lint[:20]:
            console.print(f"  {p.get('level')}: {p.get('node')} ({p.get('op', '')}): {p.get('message')}")
    if result.comparisons:
        console.print("")
        console.print(parity_table(result.comparisons))
        stability = m.reports.get("reference_stability")
        if stability:
            from edgekit.stability import describe
            console.print(f"yardstick: {describe(stability)}")
        console.print(f"\nparity: {'PASS' if result.passed else 'FAIL'}")
    if result.latency:
        lat = result.latency
        pair = lat.get("paired") or {}
        vs = (f"; {pair['speedup']:.2f}x {pair['against']} (median of {pair['rounds']} interleaved rounds)"
              if pair.get("speedup") else "")
        console.print(f"latency ({m.final.stage}, batch {lat.get('batch', 1)}): p50 {fmt_num(lat.get('p50_ms'))} ms, "
                      f"p90 {fmt_num(lat.get('p90_ms'))} ms{vs}")
        note = fp16_note(m.request["precision"], m.request.get("device"), pair.get("speedup"))
        if note:
            console.print(note)
    if m.reports.get("dry_run"):
        console.print("dry run: stopped before the target build")


def fp16_note(precision: str, device: str | None, speedup: float | None) -> str | None:
    """Why an FP16 artifact timed slower than FP32 on a CPU (a user's first question), or None."""
    if precision != "fp16" or not speedup or speedup >= FP16_SLOW or not (device or "cpu").lower().startswith("cpu"):
        return None
    return (f"note: FP16 runs at {speedup:.2f}x FP32's speed on this CPU: CPU runtimes convert most FP16 layers to "
            "FP32 to compute them. FP16 pays on GPUs and NPUs (TensorRT, Core ML, OpenVINO --device GPU); on a CPU, "
            "--int8 is the faster form")
