"""Re-check an artifact from its manifest: rebuild the reference model, verify every
stage's sha256, re-run parity. Used by ``edgekit parity``.

A manifest is data: nothing it names is ever imported. A zoo model is rebuilt from the
registry by name; a user model (``file.py:factory`` or ``package.module:factory``) is
imported only when the user names it again with ``--model``, and the sha256 of its file,
recorded at export, says whether the file changed since."""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Any

from .artifact import Artifact, Manifest
from .contracts import ExportRequest
from .errors import ArtifactError, UsageError
from .specs import PRECISIONS, InputSpec


def _ref_file(ref: str) -> Path | None:
    """The source file behind a user model reference: the ``.py`` it names, or the file of an
    already imported module (never imports anything)."""
    target, _, _ = ref.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Path(target)
    f = getattr(sys.modules.get(target), "__file__", None)
    return Path(f) if f else None


def user_ref_sha256(ref: str | None) -> str | None:
    """sha256 of a user model's source file (None for a zoo model or an unresolvable module)."""
    f = _ref_file(ref) if ref else None
    if f is None or not f.is_file():
        return None
    return hashlib.sha256(f.read_bytes()).hexdigest()


def _manifest_field(m: Manifest, table: str, key: str, types: tuple, what: str) -> Any:
    d = m.model if table == "model" else m.request
    v = d.get(key)
    if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
        raise ArtifactError(f"artifact.json: manifest field '{table}.{key}' must be {what}",
                            hint="re-export the artifact")
    return v


def _check_tolerance(tol: dict, where: str) -> None:
    from .compare import Tolerance

    known = Tolerance.__dataclass_fields__
    for k, v in tol.items():
        if k not in known:
            raise ArtifactError(f"artifact.json: unknown metric {k!r} in {where}",
                                hint=f"metrics: {', '.join(known)}")
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise ArtifactError(f"artifact.json: {where}.{k} must be a finite number, got {v!r}")


def _model_for(m: Manifest, given: ExportRequest, console) -> str:
    """The model to compare with: the zoo model the manifest names, or the user's --model."""
    from .models.user import is_user_ref

    name = m.model.get("name")
    recorded = m.model.get("user_ref")
    if recorded is None and isinstance(name, str) and is_user_ref(name):
        recorded = name  # a manifest that hides a reference in 'name' is still a user model
    if recorded is not None:
        if not isinstance(recorded, str) or not recorded or not recorded.isprintable():
            raise ArtifactError(f"artifact.json: manifest field 'model.user_ref' must be a one-line string, "
                                f"got {recorded!r}")
        if not given.model:
            raise UsageError(f"this artifact was made from a user model ({recorded}); pass --model {recorded} "
                             "to re-check it", hint="edgekit never imports a file because a manifest names it")
        return given.model
    name = _manifest_field(m, "model", "name", (str,), "a zoo model name")
    if not name.isprintable():
        raise ArtifactError(f"artifact.json: manifest field 'model.name' holds control characters: {name!r}")
    if given.model and given.model not in (name, m.model.get("alias")):
        console.warn(f"comparing with --model {given.model}; the artifact was exported from '{name}'")
    return given.model or name


def _check_source(m: Manifest, ref: str, console) -> None:
    """Warn when the user model's file differs from the one the artifact was exported from."""
    recorded = m.model.get("user_ref_sha256")
    if not isinstance(recorded, str) or not recorded:
        console.warn(f"the manifest records no sha256 of the model file: cannot tell whether {ref} changed "
                     "since the export")
        return
    now = user_ref_sha256(ref)
    if now is None:
        console.warn(f"cannot find the source file of {ref} to compare it with the one exported")
    elif now != recorded:
        console.warn(f"model file of {ref} changed since the artifact was exported (sha256 {now[:12]}, "
                     f"was {recorded[:12]}): parity compares the artifact with the model as it is now")


def _request_from_manifest(m: Manifest, given: ExportRequest, console) -> ExportRequest:
    req = m.request
    model = _model_for(m, given, console)
    shape = _manifest_field(m, "model", "input_shape", (list,), "a list of positive integers")
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ArtifactError("artifact.json: manifest field 'model.input_shape' must be a list of positive integers")
    target = _manifest_field(m, "request", "target", (str,), "a target name")
    precision = _manifest_field(m, "request", "precision", (str,), "a precision name")
    for key in ("weights", "calib", "weights_resolved", "calib_resolved"):
        _manifest_field(m, "request", key, (str, type(None)), "a path or null")
    samples = _manifest_field(m, "request", "samples", (int, type(None)), "an integer or null")
    if precision not in PRECISIONS:
        raise ArtifactError(f"artifact.json: manifest field 'request.precision' is {precision!r}",
                            hint=f"one of {', '.join(PRECISIONS)}")
    tol = _manifest_field(m, "request", "tolerance", (dict, type(None)), "an object or null") or {}
    _check_tolerance(tol, "request.tolerance")
    for i, st in enumerate(m.stages):
        if st.precision not in PRECISIONS:
            raise ArtifactError(f"artifact.json: stages[{i}].precision is {st.precision!r}",
                                hint=f"one of {', '.join(PRECISIONS)}")
        if not isinstance(st.meta.get("tolerance", {}), dict):
            raise ArtifactError(f"artifact.json: stages[{i}].meta.tolerance must be an object")
        _check_tolerance(st.meta.get("tolerance", {}), f"stages[{i}].meta.tolerance")
    weights = given.weights or _recorded_path(req, "weights", "checkpoint", "--weights")
    calib = given.calib or _recorded_path(req, "calib", "calibration data", "--calib")
    return ExportRequest(model=model, target=target, precision=precision,
                         input_shape=tuple(shape), weights=weights,
                         pretrained=bool(req.get("pretrained")), calib=calib,
                         samples=given.samples or samples, dynamic_batch=bool(req.get("dynamic_batch")),
                         tolerance=tol, threads=given.threads, device=given.device)


def _recorded_path(req: dict, key: str, what: str, flag: str) -> Path | None:
    """The file the export read: where it was resolved at export time (so that ``edgekit parity``
    works from any folder), else the path as given, relative to the current folder."""
    given = req.get(key)
    if not given:
        return None
    resolved = req.get(f"{key}_resolved")
    for p in (resolved, given):
        if p and Path(p).exists():
            return Path(p)
    where = given if not resolved or resolved == given else f"{given} ({resolved})"
    raise UsageError(f"the export's {what} is not at {where}, the path artifact.json recorded",
                     hint=f"pass {flag} with its new place")


def _bare_onnx(path: Path, given: ExportRequest) -> tuple[Manifest, ExportRequest]:
    from exporters.onnx.exporter import load_onnx

    model = load_onnx(path)  # a corrupt file is an ArtifactError (exit 2)
    if not given.model:
        raise UsageError("a bare ONNX file needs --model NAME to know what to compare it with")
    shape = given.input_shape
    if shape is None:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value or 1 for d in dims)
    inp = InputSpec(model.graph.input[0].name, tuple(shape))
    art = Artifact(path=path.resolve(), stage="onnx", format="onnx", precision="fp32", target="onnx",
                   inputs=(inp,), outputs=tuple(o.name for o in model.graph.output))
    req = ExportRequest(model=given.model, input_shape=tuple(shape), weights=given.weights, calib=given.calib,
                        samples=given.samples, threads=given.threads)
    return Manifest(model={}, request=req.to_dict(), stages=[art]), req


def recheck(artifact: Path, given: ExportRequest, console) -> tuple[list, Any, dict | None]:
    """Re-run parity for an artifact folder (or one ONNX file) against PyTorch. ``given`` holds
    what the user passed (``edgekit parity`` flags: model, weights, calib, samples, threads,
    device, localize, arch options); everything else comes from the verified manifest.
    Returns (comparisons, localization or None, the yardstick measured on these samples or None)."""
    from .parity import reference_outputs, run_parity
    from .pipeline import parity_feeds, resolve, stage_device, tolerance_fn
    from .targets import get_target
    from .torch_runner import TorchRunner, fp32_rounding_error

    path = Path(artifact)
    if path.is_file() and path.suffix == ".onnx":
        manifest, request = _bare_onnx(path, given)
    else:
        manifest = Manifest.read(path)
        if not manifest.stages:
            raise ArtifactError(f"{path} has no stages to re-check (a --dry-run manifest?)", hint="re-export it")
        request = _request_from_manifest(manifest, given, console)
    manifest.verify()  # sha256 of every stage, and every stage inside the folder, before any work
    res = resolve(request, console)
    if res.user_ref and manifest.root is not None:
        _check_source(manifest, res.user_ref, console)
    feeds = parity_feeds(res, request, console)
    tol = tolerance_fn(res.spec, request, bool(res.weights.trained),
                       fp32_rounding_error(res.model, res.inputs, feeds.heldout))
    runners = [(s, get_target(s.target).open(s, device=stage_device(s, request), threads=request.threads))
               for s in manifest.stages]
    with console.step(f"parity vs torch on {feeds.heldout.count} held-out samples"):
        reference = TorchRunner(res.model, res.inputs, manifest.stages[0].outputs)
        pairs = reference_outputs(reference, feeds.heldout)
        comps = run_parity(reference, runners, feeds.heldout, tol, feeds.heldout.source, pairs=pairs,
                           progress=console.progress)
    if given.arch:
        from .arm.compare import hook as arm_hook

        comps += arm_hook(manifest.stages, pairs, tol, given, console, feeds.heldout.source)
    from .pipeline import measure_yardstick
    from .verdict import apply_yardstick

    # The yardstick belongs to the photos: measured again on this check's own held-out samples
    # (with --calib they are not the export's; the export's figure would judge them on a bar set
    # by other photos). The export's figure stays the fallback where none can be measured.
    yard = measure_yardstick(res, request, reference, pairs, console)
    apply_yardstick(comps, yard or (manifest.reports or {}).get("reference_stability"))
    localization = None
    if given.localize:
        onnx_stages = [s for s in manifest.stages if s.format == "onnx"]
        if len(onnx_stages) < 2:
            raise UsageError("--localize needs a float ONNX stage and a second ONNX stage to compare it with")
        from calibration.localize import localize

        with console.step(f"localize: {onnx_stages[0].stage} vs {onnx_stages[-1].stage}"):
            localization = localize(onnx_stages[0].path, onnx_stages[-1].path, feeds.heldout)
    return comps, localization, yard
