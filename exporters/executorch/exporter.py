"""PyTorch → ExecuTorch ``.pte`` with the XNNPACK delegate, FP32 or INT8 (PT2E).

What this relies on (ExecuTorch 1.5 docs, read with the docs search):

* Lowering — "XNNPACK Backend", https://docs.pytorch.org/executorch/stable/backends-xnnpack.html
  and the XNNPACK lowering tutorial: ``torch.export.export`` →
  ``to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])`` →
  ``.to_executorch()``; the program's ``buffer`` is the ``.pte`` file.
* INT8 — "Quantization" (XNNPACK), https://docs.pytorch.org/executorch/stable/backends/xnnpack/xnnpack-quantization.html:
  ``XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))``
  (8-bit symmetric per-channel weights, 8-bit activations, static), then
  ``prepare_pt2e`` → calibrate → ``convert_pt2e`` on the module from ``torch.export``,
  then the normal lowering. Since ExecuTorch 1.0 ``prepare_pt2e``/``convert_pt2e`` live
  in ``torchao.quantization.pt2e.quantize_pt2e`` (executorch PR #14284 moved the docs).
* The runtime — see :mod:`exporters.executorch.runner`.

INT8 is calibrated with the pipeline's calibration feeds (:mod:`exporters.executorch.quant`
adds clamp fusion, batched calibration and a bounded mixed-precision fallback) and then
held to the shared accuracy gate on the held-out feeds (never the calibration images):
top-1 agreement with the FP32 PyTorch model when the weights are trained, cosine always,
with the pipeline's INT8 tolerance. The gate runs the lowered program on ExecuTorch's
runtime; its numbers go to the artifact's ``meta["gate"]``. A failed gate is warned
about here and fails the pipeline's parity check (exit 1, artifact kept).
"""
from __future__ import annotations

import copy
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifact import Artifact, tool_versions
from edgekit import verdict
from edgekit.compare import Comparison, Tolerance
from edgekit.console import quiet_logs
from edgekit.contracts import ExportContext, Exporter, ExportRequest, Feeds, Option
from edgekit.errors import ExportError, backend_errors, require
from edgekit.specs import InputSpec

from .runner import ExecuTorchRunner

PACKAGES = ("executorch", "torchao")
DEFAULT_CALIB_SAMPLES = 256
DEFAULT_MAX_FLOAT = 8        # mixed precision: at most this many leading layers kept in float
DEFAULT_SELECT_SAMPLES = 64  # calibration rows used to choose them (the gate uses the held-out rows)


def quiet():
    """torch.export / torchao / executorch warn and log at INFO-WARNING during export; hide that."""
    return quiet_logs("torch.export", "torch._export", "torchao", "executorch", "torch.fx", "torch._dynamo")


def example_args(inputs: tuple[InputSpec, ...]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in inputs)


def output_names(model, args: tuple[Any, ...]) -> tuple[str, ...]:
    import torch

    with torch.inference_mode():
        out = model(*args)
    n = 1 if isinstance(out, torch.Tensor) else len(out)
    return ("output",) if n == 1 else tuple(f"output{i}" for i in range(n))


def quantize_pt2e(ctx: ExportContext, tol: Tolerance, max_samples: int = DEFAULT_CALIB_SAMPLES,
                  per_channel: bool = True, max_float: int = DEFAULT_MAX_FLOAT,
                  select_samples: int = DEFAULT_SELECT_SAMPLES):
    """The PT2E-quantized module (Q/DQ around XNNPACK-supported patterns) and what was done.

    Calibrates once; when ``max_float`` > 0, checks the simulated INT8 model on the first
    ``select_samples`` calibration rows (the held-out rows stay for the gate) and keeps up to
    ``max_float`` leading layers in float until that check passes (see
    :mod:`exporters.executorch.quant`)."""
    from . import quant as eq

    if ctx.calib_feeds is None:
        raise ExportError("executorch-int8", "INT8 needs calibration feeds")
    model, inputs = ctx.model, tuple(ctx.inputs)
    layers = edgekit_layers(ctx) if per_channel else None
    if layers:
        from calibration.torch_transfer import transfer

        model = transfer(model, layers, inputs)
    cal = eq.calibrate(model, inputs, ctx.calib_feeds, max_samples, per_channel, layers)
    meta: dict[str, Any] = {
        "scheme": "XNNPACKQuantizer symmetric int8, " + ("per-channel" if per_channel else "per-tensor")
                  + " weights, static per-tensor activations, ReLU/ReLU6 fused into the layer before",
        "calibration_rows": cal.rows, "calibration_batched": cal.batched, "fused_clamps": cal.fused_clamps,
        "quantize_api": "torchao.quantization.pt2e", "weighted_layers": len(cal.weighted),
        "weights": "edgekit calibration" if layers else "PT2E observers (nearest rounding)"}
    paths = dict(cal.weighted)
    if layers:
        module, float_nodes = _edgekit_float_layers(ctx, cal, layers, tol, select_samples, meta)
    elif max_float > 0:
        subset = list(islice(iter(ctx.calib_feeds), select_samples))
        module, float_nodes, trials = eq.choose_float_layers(cal, model, subset, inputs, tol, max_float, ctx.log)
        meta["selection_trials"] = trials
    else:
        module, float_nodes = cal.convert([]), []
    meta["float_layers"] = [paths[n] for n in float_nodes]
    # the logits stay float (ranges.output_layers): a linear that writes them runs dynamically quantized
    meta["float_outputs"] = [paths[n] for n in cal.float_outputs]
    meta["dynamic_outputs"] = [paths[n] for n in cal.dynamic_outputs if n not in float_nodes]
    return module, meta


def _edgekit_float_layers(ctx: ExportContext, cal, layers, tol: Tolerance, select_samples: int,
                          meta: dict[str, Any]):
    """edgekit's calibration chose the float layers and the activation ranges: pin the ranges,
    keep its float layers that XNNPACK can run (with a producer where a pad needs one,
    :func:`exporters.executorch.ranges.float_closure`), and, when the simulated program still
    misses the calibration target on the first ``select_samples`` calibration rows, keep the
    next most INT8-sensitive layers of the calibration's ranking in float too, up to its float
    budget. Returns (module, float node names)."""
    from . import quant as eq
    from . import ranges as er

    cal.ranges, cal.output_ranges = er.input_ranges(layers), er.output_ranges(layers)
    cal.grids, cal.output_grids = er.input_grids(layers), er.output_grids(layers)
    weighted = eq.weighted_nodes(cal.graph)
    paths = dict(cal.weighted)
    by_path = {p: n for n, p in cal.weighted}
    wanted = [n for n, path in cal.weighted if path in layers and not layers[path].quantized]
    float_nodes, added, kept = er.float_closure(cal.graph, wanted, weighted, float_inputs=True)
    meta["float_layers_quantized"] = [paths[n] for n in kept]
    meta["float_layers_added"] = [paths[n] for n in added]
    if kept:
        ctx.log(f"ExecuTorch INT8: XNNPACK cannot run {', '.join(paths[n] for n in kept)} in float "
                "(a pad between it and a quantized input): quantized instead")
    module = cal.convert(float_nodes)
    meta["activation_ranges"] = {"pinned_to_edgekit": getattr(cal, "pinned", 0), "layers_with_range": len(cal.ranges),
                                 "residual_outputs_with_range": len(cal.output_ranges)}
    options = (ctx.source.meta or {}).get("options") or {}
    budget = int(round(float(options.get("max_float_fraction", 0.2)) * len(weighted)))
    ranking = [by_path[p] for p in er.sensitivity_order(ctx.source, layers) if p in by_path]
    candidates = [n for n in ranking if n not in float_nodes]
    if not tol.assessed or not candidates or len(float_nodes) >= budget:
        return module, float_nodes
    target = verdict.calibration_target(tol)
    yard = verdict.source_yardstick(ctx.source)
    subset = list(islice(iter(ctx.calib_feeds), select_samples))
    pairs = eq.reference_outputs(ctx.model, subset, tuple(ctx.inputs), cal.batched)
    trials = []

    def passes(mod, n_float: int) -> bool:
        comp = eq.score_module(mod, pairs, target)
        comp.yardstick_top1 = yard
        p = comp.primary()
        trials.append({"float_layers": n_float, "top1": p.top1, "sqnr_db": round(p.sqnr_db, 2),
                       "passed": comp.passed})
        return comp.passed

    ok = passes(module, len(float_nodes))
    while not ok and candidates and len(float_nodes) < budget:
        nxt, *candidates = candidates
        grown, _, blocked = er.float_closure(cal.graph, [*float_nodes, nxt], weighted, float_inputs=True)
        if blocked or len(grown) > budget:
            continue
        float_nodes = grown
        module = cal.convert(float_nodes)
        ok = passes(module, len(float_nodes))
        ctx.log(f"ExecuTorch INT8: {paths[nxt]} kept in float as well (simulated SQNR "
                f"{trials[-1]['sqnr_db']} dB on {len(subset)} calibration rows)")
    meta["selection_trials"] = trials
    return module, float_nodes


WEIGHT_SOURCES = ("edgekit", "pt2e")  # where INT8's weights and float layers come from


def uses_edgekit_weights(request: ExportRequest) -> bool:
    opts = ExecuTorchTarget().settings(request)
    return request.precision == "int8" and not opts.et_per_tensor and (opts.et_weights or "edgekit") == "edgekit"


def edgekit_layers(ctx: ExportContext):
    if not uses_edgekit_weights(ctx.request):
        return None
    from calibration.torch_transfer import from_source

    return from_source(ctx.source, ctx.log, "ExecuTorch INT8", "PT2E")


def lower_to_pte(module, args: tuple[Any, ...], path: Path) -> dict[str, Any]:
    """torch.export → XNNPACK partition → ExecuTorch program written to ``path``."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(module, args)
    edge = fold_constants(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]))
    info = delegation(edge.exported_program().graph_module)
    program = edge.to_executorch()
    path.write_bytes(program.buffer)
    return info


def fold_constants(edge):
    """The lowered program with the ops that read only constants computed once, at export.

    The edge dialect writes the scalars of some decompositions (``hardsigmoid``'s 3 and 6) as
    lifted 0-d constants plus a ``_to_dim_order_copy`` each, and XNNPACK does not take those
    copies: MobileNetV3-Large ran 16 portable-kernel copies outside its one delegate call on
    every inference. ExecuTorch's ``constant_prop_pass`` (executorch/exir/passes/
    constant_prop_pass.py) folds them into constants the delegate reads directly. Identical
    outputs, measured 2026-12-05."""
    from executorch.exir import EdgeProgramManager
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    ep = edge.exported_program()
    if not delegation(ep.graph_module)["non_delegated_count"]:
        return edge
    try:  # an optimization: an ExecuTorch that cannot fold keeps the program as lowered
        folded = constant_prop_pass(copy.deepcopy(ep), _skip_dim_order=False)
        return EdgeProgramManager({"forward": folded}, compile_config=edge.compile_config)
    except Exception:  # noqa: BLE001 - any failure here leaves a valid, unfolded program
        return edge


def delegation(gm) -> dict[str, Any]:
    """How much of the graph XNNPACK took: delegate calls and the ops left on the portable kernels."""
    delegated, left = 0, []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            delegated += 1
        elif name != "getitem":
            left.append(name)
    return {"delegate": "XnnpackBackend", "delegated_subgraphs": delegated, "non_delegated_ops": sorted(set(left)),
            "non_delegated_count": len(left)}


def gate_tolerance(ctx: ExportContext, trained: bool) -> Tolerance:
    """The policy's INT8 tolerance (edgekit/verdict.py): model overrides, then the user's; not
    assessed without trained weights."""
    return verdict.gate_tolerance(ctx.spec, ctx.request, "int8", trained)


def weights_trained(ctx: ExportContext) -> bool:
    explicit = getattr(ctx, "trained", None)
    if explicit is not None:
        return bool(explicit)
    return verdict.trained_weights(ctx.request)


def int8_gate(model, art: Artifact, heldout: Feeds, tol: Tolerance, threads: int | None = None) -> Comparison:
    """FP32 PyTorch vs the INT8 program on the held-out feeds."""
    from edgekit.torch_runner import TorchRunner

    comp = Comparison(stage=art.stage, runner=ExecuTorchRunner.name, precision="int8", tolerance=tol,
                      inputs_source=getattr(heldout, "source", ""))
    # The reference runs on one thread: batch-1 inference with PyTorch's OpenMP pool on a busy
    # machine waits at every op's barrier for a descheduled worker (measured 2 s instead of
    # 33 ms a Lite0 row on 2 loaded cores); one thread is never slower than ~35 ms here.
    with TorchRunner(model, art.inputs, art.outputs, threads=1) as ref:
        pairs = [(feed, ref.infer(feed)) for feed in heldout]
    with ExecuTorchRunner(art.path, art.inputs, art.outputs, threads=threads) as run:
        for feed, want in pairs:
            comp.add(want, run.infer(feed))
    return comp


class ExecuTorchTarget(Exporter):
    """ExecuTorch program (``.pte``) lowered to the XNNPACK delegate: PyTorch's on-device runtime."""

    name = "executorch"
    aliases = ("pte", "xnnpack")
    description = "ExecuTorch .pte with the XNNPACK delegate (Android/iOS/embedded CPUs); INT8 via PT2E"
    precisions = ("fp32", "int8")
    source = "torch"
    extra = "mobile"
    packages = PACKAGES
    # The calibration: uint8 activations where the graph proves a tensor never negative, and the
    # points XNNPACK adds on a projection's output before its residual add quantized in the shared
    # graph too (``add_inputs``), so that its gate and float fallback see every point the .pte has;
    # the .pte then rounds on that graph's own grids (ranges.pin_activations). When every attempt on
    # it misses the bar, the signed calibration (calibration/spares.py), with ``add_inputs`` as well.
    # History, all on the bundled photos' 200 held-out crops, top-1 / SQNR vs FP32, fidelity:
    # - until 2026-12-06 the signed calibration came first: uint8 without ``add_inputs`` left
    #   XNNPACK's added points on PT2E's histogram ranges, unknown to the fallback (pretrained Lite1:
    #   .pte 91.0 % / 24.2 dB; signed: 97.5 % / 25.3 dB);
    # - with the grids exact, uint8 + ``add_inputs`` (2026-12-06): pretrained Lite0 / Lite1 / Lite2
    #   97.5 % / 26.0, 98.5 % / 26.0, 97.5 % / 25.7 dB, fidelity 29.3 / 29.4 / 28.6 dB, against
    #   96.5 % / 25.5, 98.0 % / 25.4, 98.0 % / 25.4 dB, fidelity 27.0 / 26.6 / 28.0 dB signed first;
    #   torchvision's MobileNetV2 misses on uint8 (93.0 %) and passes on the signed alternate:
    #   96.0 % / 25.0 dB, fidelity 26.9 dB, exit 0 (92.0 % / 26.6 dB, exit 1, before).
    signed_activations = False
    calibration_options = {"add_inputs": True}
    alternate_calibration = True
    alternate_options = {"add_inputs": True}
    options = (
        Option("--et-calib-samples", "et_calib_samples", "ExecuTorch INT8: calibration samples to observe",
               type=int, default=DEFAULT_CALIB_SAMPLES),
        Option("--et-per-tensor", "et_per_tensor", "ExecuTorch INT8: per-tensor instead of per-channel weights",
               type=None, action="store_true", default=False),
        Option("--et-max-float", "et_max_float", "ExecuTorch INT8: when the gate fails, keep up to N leading "
               "layers in float (0: never)", type=int, default=DEFAULT_MAX_FLOAT),
        Option("--et-select-samples", "et_select_samples", "ExecuTorch INT8: calibration samples used to choose "
               "the float layers", type=int, default=DEFAULT_SELECT_SAMPLES),
        Option("--et-weights", "et_weights", "ExecuTorch INT8: weights and float layers from edgekit's calibration "
               "(the Q/DQ stage) or PT2E's own rounding and fallback", default="edgekit", choices=WEIGHT_SOURCES),
    )

    def handles_precision(self, request: ExportRequest) -> bool:
        """INT8 with edgekit's weights needs the pipeline's Q/DQ stage."""
        return not uses_edgekit_weights(request)

    def available(self) -> tuple[bool, str]:
        try:
            require("executorch.runtime", "mobile")
            require("executorch.exir", "mobile")
        except Exception as exc:
            return False, str(exc)
        from importlib import metadata

        return True, f"executorch {metadata.version('executorch')}"

    def check(self, request: ExportRequest) -> None:
        super().check(request)
        require("executorch.exir", "mobile", "the ExecuTorch target")
        require("executorch.runtime", "mobile", "the ExecuTorch target")
        if request.precision == "int8":
            require("torchao.quantization.pt2e", "mobile", "ExecuTorch INT8 (PT2E)")

    def export(self, ctx: ExportContext, workdir: Path) -> Artifact:
        precision = ctx.request.precision
        path = Path(workdir) / f"{ctx.stem}.pte"
        model = ctx.model.eval()
        args = example_args(ctx.inputs)
        outs = output_names(model, args)
        opts = self.settings(ctx.request)
        meta: dict[str, Any] = {"runtime": "executorch", "backend": "xnnpack"}
        t0 = time.perf_counter()
        with backend_errors(f"executorch-{precision}"), quiet():
            module = model
            if precision == "int8":
                module, meta["quantization"] = quantize_pt2e(
                    ctx, gate_tolerance(ctx, weights_trained(ctx)),
                    max_samples=opts.et_calib_samples,
                    per_channel=not opts.et_per_tensor,
                    max_float=opts.et_max_float,
                    select_samples=opts.et_select_samples)
            meta.update(lower_to_pte(module, args, path))
        meta["export_seconds"] = round(time.perf_counter() - t0, 2)
        art = Artifact(path=path, stage=f"executorch-{precision}", format="pte", precision=precision,
                       target=self.name, inputs=tuple(ctx.inputs), outputs=outs, meta=meta,
                       tools=tool_versions(*PACKAGES))
        if precision == "int8":
            self._gate(ctx, art)
        ctx.log(f"ExecuTorch {precision}: {meta['delegated_subgraphs']} XNNPACK subgraph(s), "
                f"{meta['non_delegated_count']} op(s) left outside, {art.size_bytes / 1e6:.1f} MB")
        return art

    def _gate(self, ctx: ExportContext, art: Artifact) -> None:
        trained = weights_trained(ctx)
        tol = gate_tolerance(ctx, trained)
        comp = int8_gate(ctx.model, art, ctx.heldout_feeds, tol, ctx.request.threads)
        comp.yardstick_top1 = verdict.source_yardstick(ctx.source)
        p = comp.primary()
        art.meta["gate"] = {"passed": comp.passed, "failures": comp.failures, "trained_weights": trained,
                            "tolerance": tol.to_dict(), "heldout": comp.inputs_source, "rows": p.rows or p.samples,
                            "top1": p.top1, "top5": p.top5, "cosine": p.cosine,
                            "sqnr_db": p.sqnr_db if np.isfinite(p.sqnr_db) else None, "max_abs": p.max_abs,
                            "runner": comp.runner}
        top1 = f"top-1 {p.top1:.1%}, " if p.top1 is not None and trained else ""
        if not tol.assessed:
            ctx.log(f"INT8 accuracy not assessed ({tol.assessed_note}): cosine {p.cosine:.4f} vs FP32 on "
                    f"{p.rows or p.samples} held-out samples")
        elif comp.passed:
            ctx.log(f"INT8 gate passed on {p.rows or p.samples} held-out samples: {top1}cosine {p.cosine:.4f}")
        else:
            ctx.warn(f"ExecuTorch INT8 gate failed ({'; '.join(comp.failures)}): keep FP32 for this model "
                     f"or calibrate on your own images (--calib DIR)")

    def open(self, artifact: Artifact, device: str | None = None, **options: Any) -> ExecuTorchRunner:
        self.check_device(device)  # XNNPACK on the CPU
        return ExecuTorchRunner(artifact.path, artifact.inputs, artifact.outputs, threads=options.get("threads"))
