"""``export``: model → ONNX → simplified → precision-encoded ONNX → target, then parity.

DESIGN.md §5. The target's ``check`` runs before any work; every stage is written
into a temporary folder that is renamed into place only when the manifest is
complete; parity compares the PyTorch reference with every stage on held-out real
photos, so a failure names the stage that diverged.
"""
from __future__ import annotations

import shlex
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .artifact import Artifact, Manifest, atomic_dir
from .compare import ROUNDING_FACTOR, Comparison, Tolerance
from .outdir import claim
from .console import Console
from .contracts import ExportContext, ExportRequest
from .errors import ExportError, UsageError
from .recheck import user_ref_sha256
from .specs import InputSpec, check_precision
from .verdict import apply_yardstick, quantization_tolerance, top1_note


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    comparisons: list[Comparison]
    latency: dict[str, Any] | None = None
    lint: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(self.comparisons)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


@dataclass
class Resolved:
    """The model side of a request: spec, module, weights, inputs."""

    spec: Any
    alias: str | None
    model: Any
    weights: Any
    inputs: tuple[InputSpec, ...]
    user_ref: str | None = None


def resolve(request: ExportRequest, console: Console | None = None) -> Resolved:
    from .models import build
    from .models.registry import check_input_shape, get_spec, resolve_name
    from .models.user import build_user_model, is_user_ref, load_user_spec
    from .resources import check_memory
    from .torch_runner import probe

    if is_user_ref(request.model):
        spec, alias, user_ref = load_user_spec(request.model, request.input_shape), None, request.model
    else:
        name, alias = resolve_name(request.model)
        spec, user_ref = get_spec(name), None
        if alias and console:
            console.info(f"model '{alias}' resolved to '{name}'")
    check_request_numbers(request)
    check_opset(request)
    shape = tuple(request.input_shape) if request.input_shape else (request.batch, *spec.input.shape[1:])
    if request.input_shape:
        check_input_shape(spec, shape)
    # before the model is built (its BatchNorm statistics decode photos at this size) and any feed is decoded
    check_memory(shape, heldout_samples(request), calib=calib_samples(request),
                 what="--samples" if request.samples is not None else None,
                 calib_what="--calib-samples" if request.calib_samples is not None else None)
    model, weights = build_user_model(spec, request, console) if user_ref else \
        build(spec, weights=request.weights, pretrained=request.pretrained, console=console)
    if getattr(weights, "preprocess", None) is not None:  # e.g. torchvision's V2 weights: resize 232, not 256
        spec = replace(spec, preprocess=weights.preprocess)
    if getattr(weights, "classes", None):   # a checkpoint fine-tuned on its own classes
        spec = replace(spec, num_classes=weights.classes)
    inputs = (InputSpec(spec.input.name, shape, spec.input.dtype, spec.input.layout, request.dynamic_batch),)
    # a zoo model at its own shape is known to run (tests/edgekit/models/test_zoo.py)
    if user_ref or request.input_shape:
        probe(model, inputs, spec.name, user=bool(user_ref),
              default_shape=None if user_ref else tuple(spec.input.shape))
    return Resolved(spec, alias, model, weights, inputs, user_ref)


def tolerance_fn(spec, request: ExportRequest, trained: bool, fp32_floor: float = 0.0):
    """Stage → Tolerance (the policy of edgekit/verdict.py): by the stage's precision, the model's
    overrides, the user's; reduced precision on untrained weights is not assessed; FP32 max-abs
    never below ``ROUNDING_FACTOR`` × the reference's own FP32 rounding error."""

    def for_stage(art: Artifact) -> Tolerance:
        p = art.precision
        # the stage may carry its own looser thresholds (e.g. a TensorRT engine built with --tf32)
        tol = quantization_tolerance(p, trained, {**spec.tolerance.get(p, {}), **art.meta.get("tolerance", {})},
                                     request.tolerance, top1_note(spec, request))
        if p == "fp32" and fp32_floor > 0 and "max_abs" not in request.tolerance:
            tol = replace(tol, max_abs_floor=ROUNDING_FACTOR * fp32_floor)
        return tol

    return for_stage


def check_request_numbers(request: ExportRequest) -> None:
    """The numeric fields of a request (API, CI config or manifest alike), as the CLI checks them."""
    from .bench.guard import guard_seconds
    from .specs import check_int, check_tolerances, guard_seconds_option

    check_int("--batch", request.batch, 1)
    for flag, value in (("--samples", request.samples), ("--calib-samples", request.calib_samples),
                        ("--threads", request.threads), ("--opset", request.opset)):
        if value is not None:
            check_int(flag, value, 1)
    request.tolerance = check_tolerances(request.tolerance)
    if request.guard_seconds is not None:
        request.guard_seconds = guard_seconds_option()(request.guard_seconds)
    guard_seconds(request)  # a bad $EDGEKIT_GUARD_SECONDS is refused before any work, not at the build


def check_opset(request: ExportRequest) -> None:
    """``--opset`` is for ONNX: refused where no ONNX is written, and outside the range the
    installed exporter can write (before any work)."""
    if request.opset is None:
        return
    from .targets import get_target

    target = get_target(request.target)
    if target.source != "onnx" and target.handles_precision(request):
        raise UsageError(f"--opset applies to ONNX, and target '{target.name}' converts from PyTorch without it",
                         hint="drop --opset")
    get_target("onnx").check_opset(request.opset)


def heldout_samples(request: ExportRequest) -> int:
    """Held-out parity samples: ``--samples``, else 200 at reduced precision, 32 at FP32."""
    return request.samples if request.samples is not None else (200 if request.precision != "fp32" else 32)


def calib_samples(request: ExportRequest) -> int:
    """INT8 calibration samples: ``--calib-samples``, else :data:`edgekit.resources.CALIB_SAMPLES`."""
    from .resources import CALIB_SAMPLES

    return request.calib_samples if request.calib_samples is not None else CALIB_SAMPLES


def stage_device(stage: Artifact, request: ExportRequest) -> str | None:
    """``--device`` belongs to the requested target: its stages run there; the ONNX stages
    that lead to another target's artifact run on ONNX Runtime's CPU as references."""
    from .targets import get_target

    return request.device if stage.target == get_target(request.target).name else None


def parity_feeds(res: Resolved, request: ExportRequest, console: Console | None = None):
    """Calibration and held-out feeds for a request (bundled photos unless --calib). The one
    warning about converted or skipped images goes to the console (and so the manifest)."""
    import warnings

    from edgekit.feeds import photo_feeds

    n = heldout_samples(request)
    feed_input = replace(res.inputs[0], shape=(1, *res.inputs[0].shape[1:])) if request.dynamic_batch else res.inputs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feeds = photo_feeds(res.spec.preprocess, feed_input, folder=request.calib, heldout=n,
                            calib=calib_samples(request))
    for w in caught:
        if console is not None:
            console.warn(str(w.message))
        else:
            warnings.warn(str(w.message), stacklevel=2)
    return feeds


def _onnx_stages(res: Resolved, request: ExportRequest, target, feeds, work: Path, stem: str,
                 console: Console, spare_dir: Path | None = None, int8: dict | None = None) -> list[Artifact]:
    """The shared ONNX stages (``int8`` receives the calibration's options, for an alternate)."""
    from .targets import get_target

    onnx = get_target("onnx")  # the shared ONNX stages are the ONNX target's work
    stages = _Clean(onnx.pruned)
    with console.step("export torch → ONNX") as d:
        stages.append(onnx.export_source(res.model, res.inputs, work / f"{stem}.onnx", opset=request.opset,
                                         dynamic_batch=request.dynamic_batch))
        d["summary"] = f"{stages[-1].meta['nodes']} nodes, opset {stages[-1].meta['opset']}" + \
            (" (from $EDGEKIT_EXPORT_CACHE)" if stages[-1].meta.get("export_cache") == "hit" else "")
    if request.simplify:
        with console.step(f"simplify ({request.simplifier})") as d:
            stages.append(onnx.simplify_source(stages[-1], work / f"{stem}.sim.onnx", request.simplifier))
            d["summary"] = f"{stages[-1].meta['nodes_before']} → {stages[-1].meta['nodes']} nodes"
    if target.handles_precision(request):
        return list(stages)
    if request.precision == "fp16":
        from calibration.fp16 import convert_fp16

        with console.step("FP16 graph transform") as d:
            stages.append(convert_fp16(stages[-1], work / f"{stem}.fp16.onnx"))
            d["summary"] = f"{stages[-1].meta.get('nodes', '?')} nodes"
    elif request.precision == "int8":
        from .int8_stage import int8_stage

        stages.append(int8_stage(res, request, target, feeds, stages[-1], work / f"{stem}.int8.onnx", console,
                                 spare_dir=spare_dir, int8=int8))
    return list(stages)


class _Clean(list):
    """The stage list of :func:`_onnx_stages`: every ONNX appended is pruned first (no unused
    initializer or dangling node in a delivered ONNX, exporters/onnx/hygiene.py)."""

    def __init__(self, prune):
        super().__init__()
        self._prune = prune

    def append(self, art) -> None:
        super().append(self._prune(art) if art.format == "onnx" else art)


def export(request: ExportRequest, console: Console | None = None) -> ExportResult:
    from . import retry
    from .parity import reference_outputs
    from .targets import get_target
    from .torch_runner import TorchRunner, fp32_rounding_error

    console = console or Console()
    check_precision(request.precision)
    target = get_target(request.target)
    early = _default_out(request, target)
    if early is not None:  # refuse a folder we may not write before any work (edgekit.outdir)
        claim(early, request.force, console)
    target.check(request)  # fail fast: missing backend, no GPU, unsupported precision
    if request.arch:
        from .arm.compare import precheck

        precheck(request)  # no aarch64 runner for the target, or no userland: before any work
    res = resolve(request, console)
    stem = res.spec.name
    out = Path(request.out or Path("artifacts") / f"{stem}-{target.name}-{request.precision}")
    feeds = parity_feeds(res, request, console)
    floor = fp32_rounding_error(res.model, res.inputs, feeds.heldout) if request.parity else 0.0
    tol = tolerance_fn(res.spec, request, bool(res.weights.trained), floor)
    with atomic_dir(out, overwrite=request.force, log=console) as work, \
            tempfile.TemporaryDirectory(prefix="edgekit-spares-") as spare_tmp:
        stages: list[Artifact] = []
        spare_dir, int8 = Path(spare_tmp), {}
        if target.source == "onnx" or not target.handles_precision(request):
            # a torch-fed target that reuses the shared calibration gets the Q/DQ stage too
            stages += _onnx_stages(res, request, target, feeds, work, stem, console, spare_dir, int8)
        lint = target.lint(stages[-1]) if stages else []
        errors = [p for p in lint if p.get("level") == "error"]
        if errors and not request.dry_run:
            first = errors[0]
            raise ExportError("lint", f"{len(errors)} problem(s) for {target.name}; first: node "
                              f"'{first.get('node')}': {first.get('message')}",
                              hint="run 'edgekit export ... --dry-run' to see the full lint report")
        reference = pairs = stability = None
        if request.parity:
            with console.step(f"torch reference on {feeds.heldout.count} held-out samples ({feeds.heldout.source})"):
                reference = TorchRunner(res.model, res.inputs, stages[0].outputs if stages else ("output",))
                pairs = reference_outputs(reference, feeds.heldout,
                                          progress=lambda i, n: console.progress("torch", i, n))
            stability = measure_yardstick(res, request, reference, pairs, console)
        qdq_at = next((i for i, s in enumerate(stages) if s.stage == "qdq"), None)
        spare, more = [], None
        if qdq_at is not None and request.parity:
            spare, more = retry.further_attempts(target, stages, qdq_at, int8.get("options"), feeds, spare_dir,
                                                 console.info)
        stages, comps = retry.run(lambda st: _build(st, res, request, target, feeds, work, stem, console),
                                  lambda st: _parity(st, request, feeds, tol, reference, pairs, stability, console),
                                  stages, spare, qdq_at, retry.Attempts(work, spare_dir / "attempts"), console,
                                  get_target("onnx").pruned, enabled=not request.dry_run, more=more)
        if request.parity and request.arch:
            from .arm.compare import hook as arm_hook

            comps += arm_hook(stages, pairs, tol, request, console, feeds.heldout.source)
            apply_yardstick(comps, stability)
        latency = _latency(stages, res, request, feeds, console) if (request.bench and stages) else None
        model_info = {**res.spec.summary(), "alias": res.alias, "weights": res.weights.to_dict(),
                      "user_ref": res.user_ref, "user_ref_sha256": user_ref_sha256(res.user_ref),
                      "input_shape": list(res.inputs[0].shape)}
        manifest = Manifest(model=model_info, request=request.to_dict(), stages=stages,
                            parity=[c.to_dict() for c in comps],
                            reports={"lint": lint, "latency": latency, "warnings": console.warnings,
                                     "skipped_images": feeds.calib.skipped + feeds.heldout.skipped,
                                     "reference_stability": stability,
                                     "dry_run": request.dry_run},
                            command=" ".join(shlex.quote(a) for a in ["edgekit", *sys.argv[1:]]))
        manifest.write(work)
    manifest = Manifest.read(out)
    return ExportResult(out=Path(out).resolve(), manifest=manifest, comparisons=comps, latency=latency, lint=lint)


def _build(stages: list[Artifact], res: Resolved, request: ExportRequest, target, feeds, work: Path, stem: str,
           console: Console) -> list[Artifact]:
    """``stages`` with the target's artifact appended (when it builds one)."""
    if request.dry_run or not target.builds_artifact(request):
        return stages
    fp32 = [s for s in stages if s.precision == "fp32"]
    ctx = ExportContext(request=request, spec=res.spec, model=res.model, inputs=res.inputs,
                        source=stages[-1] if stages else None, calib_feeds=feeds.calib,
                        heldout_feeds=feeds.heldout, log=console.info, warn=console.warn, stem=stem,
                        fp32_source=fp32[-1] if fp32 else None, progress=console.progress)
    with console.step(f"build {target.name} artifact") as d:
        art = target.export(ctx, work)
        d["summary"] = f"{art.format}, {art.size_bytes / 1e6:.1f} MB"
    return [*stages, art]


def _parity(stages: list[Artifact], request: ExportRequest, feeds, tol, reference, pairs, stability,
            console: Console) -> list[Comparison]:
    """Every stage against the torch reference's ``pairs`` (and its fidelity), with the yardstick."""
    from .parity import run_parity
    from .targets import get_target

    if not request.parity:
        return []
    runners = [(s, get_target(s.target).open(s, device=stage_device(s, request), threads=request.threads))
               for s in stages]
    with console.step(f"parity vs torch on {feeds.heldout.count} held-out samples ({feeds.heldout.source})"):
        comps = run_parity(reference, runners, feeds.heldout, tol, feeds.heldout.source, pairs=pairs,
                           progress=console.progress)
    apply_yardstick(comps, stability)
    return comps


def _default_out(request: ExportRequest, target) -> Path | None:
    """--out, or the default folder when it is known without loading the model (zoo names)."""
    from .models.registry import resolve_name
    from .models.user import is_user_ref

    if request.out:
        return Path(request.out)
    if is_user_ref(request.model):
        return None  # the default name comes from the user's spec; atomic_dir checks it
    return Path("artifacts") / f"{resolve_name(request.model)[0]}-{target.name}-{request.precision}"


def measure_yardstick(res: Resolved, request: ExportRequest, reference, pairs, console: Console) -> dict[str, Any] | None:
    """For trained weights at reduced precision: how the FP32 reference scores against itself
    under half-step input noise (edgekit.stability), the yardstick for the top-1 figures.
    ``pairs``: parity's (feed, clean reference output), so only the noisy pass runs here."""
    from .stability import reference_stability

    if request.precision == "fp32" or not res.weights.trained:
        return None
    with console.step("reference stability (FP32 vs itself, ±½ pixel step of input noise)") as d:
        s = reference_stability(reference.infer, res.inputs[0], res.spec.preprocess, pairs,
                                progress=lambda i, n: console.progress("noisy", i, n))
        if s is None:
            d["summary"] = "input is not an image: skipped"
    return s


def _latency(stages: list[Artifact], res: Resolved, request: ExportRequest, feeds,
             console: Console) -> dict[str, Any] | None:
    """The final stage's latency, never alone: timed in interleaved rounds against a reference
    on the same feed and machine (the last FP32 ONNX stage on ONNX Runtime, or torch eager when
    the final stage is that ONNX), so that its speed-up reads the same on a busy machine
    (:func:`edgekit.bench.timing.time_runners`, :func:`~edgekit.bench.timing.paired_ratio`)."""
    from .bench.timing import paired_ratio, time_runners
    from .targets import get_target
    from .torch_runner import TorchRunner

    art = stages[-1]
    runner = get_target(art.target).open(art, device=stage_device(art, request), threads=request.threads)
    fp32 = [s for s in stages if s.format == "onnx" and s.precision == "fp32"]
    if fp32 and fp32[-1] is not art:
        against = f"ONNX Runtime FP32 ({fp32[-1].stage})"
        partner = get_target("onnx").open(fp32[-1], threads=request.threads)
    else:
        against = "torch eager FP32"
        partner = TorchRunner(res.model, res.inputs, threads=request.threads)
    feed = next(iter(feeds.heldout))
    with console.step(f"latency of {art.stage} ({runner.name}), interleaved with {against}") as d:
        with runner, partner:
            t = time_runners({"final": runner, "reference": partner}, feed, seconds=1.0)
        pair = paired_ratio(t, "final", "reference")
        speedup = 1.0 / max(pair["ratio"], 1e-9)
        d["summary"] = f"p50 {t['final']['p50_ms']:.2f} ms, {speedup:.2f}x {against}"
    first = next(iter(feed.values()))
    return {**{k: t["final"][k] for k in ("p50_ms", "p90_ms", "mean_ms", "min_ms", "iterations")},
            "batch": int(first.shape[0]) if getattr(first, "ndim", 0) else 1, "runner": runner.name,
            "threads": request.threads,
            "paired": {"against": against, "reference_p50_ms": t["reference"]["p50_ms"], "speedup": round(speedup, 3),
                       "rounds": pair["rounds"], "rounds_faster": pair["rounds_faster"]}}
