"""Re-check an artifact from its manifest: rebuild the reference model, verify every
stage's sha256, re-run parity. Used by ``edgekit parity``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import Artifact, Manifest
from .contracts import ExportRequest
from .errors import UsageError
from .specs import InputSpec


def _request_from_manifest(m: Manifest, args) -> ExportRequest:
    req = m.request
    model = m.model.get("user_ref") or m.model["name"]
    weights = args.weights or (req.get("weights") and Path(req["weights"]))
    return ExportRequest(model=model, target=req["target"], precision=req["precision"],
                         input_shape=tuple(m.model["input_shape"]), weights=weights,
                         pretrained=bool(req.get("pretrained")), calib=args.calib or req.get("calib"),
                         samples=args.samples or req.get("samples"), dynamic_batch=bool(req.get("dynamic_batch")),
                         tolerance=req.get("tolerance") or {}, threads=args.threads, device=args.device)


def _bare_onnx(args) -> tuple[Manifest, ExportRequest]:
    from exporters.onnx import load_onnx

    model = load_onnx(args.artifact)  # a corrupt file is an ArtifactError (exit 2)
    if not args.model:
        raise UsageError("a bare ONNX file needs --model NAME to know what to compare it with")
    shape = args.input_shape
    if shape is None:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value or 1 for d in dims)
    inp = InputSpec(model.graph.input[0].name, tuple(shape))
    art = Artifact(path=args.artifact.resolve(), stage="onnx", format="onnx", precision="fp32", target="onnx",
                   inputs=(inp,), outputs=tuple(o.name for o in model.graph.output))
    req = ExportRequest(model=args.model, input_shape=tuple(shape), weights=args.weights, calib=args.calib,
                        samples=args.samples, threads=args.threads)
    return Manifest(model={}, request=req.to_dict(), stages=[art]), req


def recheck(args, console) -> tuple[list, Any]:
    from .parity import reference_outputs, run_parity
    from .pipeline import parity_feeds, resolve, tolerance_fn
    from .targets import get_target
    from .torch_runner import TorchRunner, fp32_rounding_error

    path = Path(args.artifact)
    if path.is_file() and path.suffix == ".onnx":
        manifest, request = _bare_onnx(args)
    else:
        manifest = Manifest.read(path)
        request = _request_from_manifest(manifest, args)
    for s in manifest.stages:
        s.verify()
    res = resolve(request, console)
    feeds = parity_feeds(res, request)
    tol = tolerance_fn(res.spec, request, bool(res.weights.trained),
                       fp32_rounding_error(res.model, res.inputs, feeds.heldout))
    runners = [(s, get_target(s.target).open(s, device=request.device, threads=request.threads))
               for s in manifest.stages]
    with console.step(f"parity vs torch on {feeds.heldout.count} held-out samples"):
        reference = TorchRunner(res.model, res.inputs, manifest.stages[0].outputs)
        pairs = reference_outputs(reference, feeds.heldout)
        comps = run_parity(reference, runners, feeds.heldout, tol, feeds.heldout.source, pairs=pairs)
    if getattr(args, "arch", None):
        from .arm.compare import hook as arm_hook

        comps += arm_hook(manifest.stages, pairs, tol, args, console, feeds.heldout.source)
    localization = None
    if args.localize:
        onnx_stages = [s for s in manifest.stages if s.format == "onnx"]
        if len(onnx_stages) < 2:
            raise UsageError("--localize needs a float ONNX stage and a second ONNX stage to compare it with")
        from calibration.localize import localize

        with console.step(f"localize: {onnx_stages[0].stage} vs {onnx_stages[-1].stage}"):
            localization = localize(onnx_stages[0].path, onnx_stages[-1].path, feeds.heldout)
    return comps, localization
