"""PT2E INT8 for ExecuTorch's XNNPACK delegate: annotation, calibration, mixed precision.

The flow is the one ExecuTorch documents ("Quantization", XNNPACK backend,
https://docs.pytorch.org/executorch/stable/backends/xnnpack/xnnpack-quantization.html):
``XNNPACKQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True)``,
``prepare_pt2e`` on the ``torch.export``-ed module, calibration, ``convert_pt2e``
(``torchao.quantization.pt2e.quantize_pt2e``). Three things are added, each measured
on the pretrained EfficientNet-Lite0:

* **Clamps fused into the layer before them.** The XNNPACK quantizer fuses ReLU into a
  convolution but treats ReLU6 (``hardtanh``) as an op that *shares* its input's
  quantization, so the convolution's output is quantized over its whole pre-activation
  range (for Lite0's stem about −20…17) and the clamp then keeps ~40 of the 256 levels.
  Here the convolution/linear output is left unobserved and the clamp's output gets the
  activation spec instead; XNNPACK's ``FuseActivationPass`` folds the clamp into the
  convolution's output range at lowering, so the kernel is still one quantized conv.
  Lite0 output cosine vs FP32: 0.89 → 0.99.
* **Batched calibration.** Observing one image at a time costs ~3× more per image than
  a batch of 32, so calibration runs on a batch-dynamic export when the model allows it.
* **Mixed precision when the gate fails.** Observers record *float* activations during
  calibration, so one calibration serves every choice of layers to keep in float: the
  observer statistics are copied into a re-prepared module with fewer quantized layers
  and converted again, without another calibration pass. The first weighted layers are
  kept float first (8-bit error compounds from there, see docs/mobile.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from calibration.torch_transfer import LayerWeights, int8_by_weight, pin_observer, weight_fingerprint
from edgekit.compare import Comparison, Tolerance
from edgekit.contracts import Feeds
from edgekit.errors import ExportError
from edgekit.specs import InputSpec

CALIB_BATCH = 32
Q_KEY = "quantization_annotation"  # torchao.quantization.pt2e.quantizer.quantizer.Q_ANNOTATION_KEY


def _targets():
    import torch

    aten = torch.ops.aten
    clamps = {aten.hardtanh.default, aten.hardtanh_.default, aten.relu.default, aten.relu_.default}
    weighted = {aten.conv1d.default, aten.conv2d.default, aten.convolution.default, aten.linear.default}
    return clamps, weighted


def weighted_nodes(gm) -> list[Any]:
    """The graph's convolutions and linears, in execution order."""
    _, weighted = _targets()
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in weighted]


def module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else node.name


def fuse_clamps(gm) -> int:
    """Move the output quantization of conv/linear → ReLU/ReLU6 pairs after the clamp."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    clamps, weighted = _targets()
    fused = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in clamps:
            continue
        prev = node.args[0]
        if getattr(prev, "target", None) not in weighted or len(prev.users) != 1:
            continue
        ann = prev.meta.get(Q_KEY)
        if ann is None or ann.output_qspec is None:
            continue
        spec, ann.output_qspec = ann.output_qspec, None
        node.meta[Q_KEY] = QuantizationAnnotation(input_qspec_map={}, output_qspec=spec, _annotated=True)
        fused += 1
    return fused


def keep_float(gm, names: Iterable[str]) -> None:
    """Drop the annotations of the named weighted nodes (and their fused clamps), then of
    every node whose shared spec pointed at a dropped output: those run in float."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    clamps, _ = _targets()
    names = set(names)
    for node in weighted_nodes(gm):
        if node.name in names:
            node.meta.pop(Q_KEY, None)
            for user in node.users:
                if user.target in clamps:
                    user.meta.pop(Q_KEY, None)
    changed = True
    while changed:
        changed = False
        for node in gm.graph.nodes:
            ann = node.meta.get(Q_KEY)
            if ann is None:
                continue
            for spec in (ann.output_qspec, *ann.input_qspec_map.values()):
                if isinstance(spec, SharedQuantizationSpec):
                    src = spec.edge_or_node if not isinstance(spec.edge_or_node, tuple) else spec.edge_or_node[0]
                    src_ann = src.meta.get(Q_KEY)
                    if src_ann is None or src_ann.output_qspec is None:
                        node.meta.pop(Q_KEY)
                        changed = True
                        break


def make_quantizer(per_channel: bool = True, float_nodes: Sequence[str] = (), dynamic: Sequence[str] = ()):
    """An ``XNNPACKQuantizer`` (symmetric INT8, per-channel weights) with fused clamps, the
    given weighted nodes left in float, and the linears under the module paths ``dynamic``
    quantized dynamically: INT8 weights, the input quantized per call on its own range, a float
    output (XNNPACK's ``qd8-f32-qc8w`` linear)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    class EdgekitXnnpackQuantizer(XNNPACKQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            self.fused_clamps = fuse_clamps(model)
            keep_float(model, float_nodes)
            return model

    quantizer = EdgekitXnnpackQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    for path in dynamic:
        quantizer.set_module_name(path, get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=True))
    return quantizer


def _dynamic(mod) -> bool:
    """A dynamic quantization point's observer: nothing to calibrate, its range is taken per call."""
    return type(mod).__name__ == "PlaceholderObserver" or bool(getattr(mod, "is_dynamic", False))


def export_for_calibration(model, inputs: tuple[InputSpec, ...]):
    """``torch.export`` with a dynamic batch (calibrate/evaluate in batches) or, if the model
    does not allow it, the static input shapes. Returns (graph module, batched?)."""
    import torch

    static = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in inputs)
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        args = tuple(torch.zeros((2, *i.shape[1:]), dtype=getattr(torch, i.dtype)) for i in inputs)
        gm = torch.export.export(model, args, dynamic_shapes=tuple({0: batch} for _ in inputs)).module()
        return gm, True
    except Exception:  # data-dependent shapes, hard-coded batch: fall back to the static shapes
        return torch.export.export(model, static).module(), False


def _batches(feeds: Iterable[dict[str, np.ndarray]], inputs: tuple[InputSpec, ...], size: int,
             limit: int | None = None) -> Iterable[tuple[np.ndarray, ...]]:
    rows: list[tuple[np.ndarray, ...]] = []
    taken = 0
    for feed in feeds:
        arrays = tuple(np.asarray(feed[i.name], dtype=np.float32) for i in inputs)
        for r in range(arrays[0].shape[0]):
            if limit is not None and taken >= limit:
                break
            rows.append(tuple(a[r:r + 1] for a in arrays))
            taken += 1
            if len(rows) == size:
                yield tuple(np.concatenate(col) for col in zip(*rows))
                rows = []
        if limit is not None and taken >= limit:
            break
    if rows:
        yield tuple(np.concatenate(col) for col in zip(*rows))


def _observers(gm) -> dict[str, Any]:
    """Observer modules keyed by the node they observe (stable across re-preparations)."""
    from torchao.quantization.pt2e.observer import ObserverBase

    out: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = getattr(gm, node.target)
            if isinstance(mod, ObserverBase) and node.args and not _dynamic(mod):
                key = node.args[0].name
                n = 0
                while f"{key}#{n}" in out:
                    n += 1
                out[f"{key}#{n}"] = mod
    return out


@dataclass
class Calibrated:
    """One calibration of every quantization point, reusable for any set of float layers."""

    graph: Any                      # the exported (unprepared) graph module
    batched: bool
    per_channel: bool
    observer_state: dict[str, dict[str, Any]]
    rows: int
    fused_clamps: int
    weighted: list[tuple[str, str]] = field(default_factory=list)  # (node name, module path)
    ranges: dict[str, float] = field(default_factory=dict)  # module path → edgekit's clip of its input
    output_ranges: dict[str, float] = field(default_factory=dict)  # module path → clip of its output (residual)
    grids: dict[str, tuple[float, int]] = field(default_factory=dict)  # module path → its input's int8 grid
    output_grids: dict[str, tuple[float, int]] = field(default_factory=dict)  # likewise of its output (residual)
    float_outputs: list[str] = field(default_factory=list)  # layers that write the model's outputs: always float
    dynamic_outputs: list[str] = field(default_factory=list)  # output linears: INT8 weights, float output

    def convert(self, float_nodes: Sequence[str] = ()):
        """The converted (Q/DQ) module with ``float_nodes`` and :attr:`float_outputs` kept in
        float, and the :attr:`dynamic_outputs` not in ``float_nodes`` quantized dynamically
        (their output stays float), without recalibrating."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        keep = [*float_nodes, *(n for n in self.float_outputs if n not in float_nodes)]
        paths = dict(self.weighted)
        dynamic = [paths[n] for n in self.dynamic_outputs if n not in float_nodes]
        prepared = prepare_pt2e(copy.deepcopy(self.graph), make_quantizer(self.per_channel, keep, dynamic))
        observers = _observers(prepared)
        missing = [k for k in observers if k not in self.observer_state]
        if missing:
            raise ExportError("executorch-int8", f"no calibration statistics for {len(missing)} observer(s)")
        for key, mod in observers.items():
            mod.load_state_dict(self.observer_state[key])
        if self.ranges or self.output_ranges or self.grids or self.output_grids:
            from .ranges import pin_activations

            self.pinned = pin_activations(prepared, self.ranges, self.output_ranges, self.grids, self.output_grids)
        return convert_pt2e(prepared)


def calibrate(model, inputs: tuple[InputSpec, ...], feeds: Feeds, max_samples: int,
              per_channel: bool = True, layers: dict[str, LayerWeights] | None = None) -> Calibrated:
    """Prepare with every layer quantized and observe ``max_samples`` calibration rows.

    ``layers``: edgekit's calibrated weights, already transferred into ``model``; their
    weight observers are then given edgekit's per-channel scales, so the program holds
    edgekit's INT8 weights exactly."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    graph, batched = export_for_calibration(model, inputs)
    quantizer = make_quantizer(per_channel)
    prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
    rows = 0
    with torch.no_grad():
        for batch in _batches(feeds, inputs, CALIB_BATCH if batched else 1, max_samples):
            prepared(*(torch.from_numpy(a) for a in batch))
            rows += batch[0].shape[0]
    if rows == 0:
        raise ExportError("executorch-int8", "no calibration samples", hint="pass --calib DIR with images")
    if layers and per_channel:
        _set_weight_scales(prepared, layers)
    state = {k: copy.deepcopy(m.state_dict()) for k, m in _observers(prepared).items()}
    from .ranges import float_closure, output_layers

    nodes = weighted_nodes(graph)
    weighted = [(n.name, module_path(n)) for n in nodes]
    # The layers that write the model's outputs keep a float output (ranges.output_layers): a
    # linear as XNNPACK's dynamically quantized linear (INT8 weights), anything else in float.
    outputs = output_layers(graph, nodes)
    linear = {n.name for n in nodes if n.target is torch.ops.aten.linear.default}
    dynamic = [n for n in outputs if n in linear] if per_channel else []
    floats, _, _ = float_closure(graph, [n for n in outputs if n not in dynamic], nodes)
    return Calibrated(graph, batched, per_channel, state, rows, getattr(quantizer, "fused_clamps", 0), weighted,
                      float_outputs=floats, dynamic_outputs=dynamic)


def _set_weight_scales(prepared, layers: dict[str, LayerWeights]) -> int:
    """Set the observers of transferred weights (matched by value) to edgekit's scales."""
    by_weight = int8_by_weight(layers)
    done = 0
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.args or getattr(node.args[0], "op", None) != "get_attr":
            continue
        obs = getattr(prepared, node.target)
        target = node.args[0].target
        try:
            w = prepared.get_parameter(target)
        except AttributeError:
            w = prepared.get_buffer(target)
        lw = by_weight.get(weight_fingerprint(w))
        if lw is None or getattr(obs, "ch_axis", None) != 0:
            continue
        pin_observer(obs, lw.scales)
        done += 1
    return done


def reference_outputs(model, feeds: Feeds, inputs: tuple[InputSpec, ...], batched: bool) -> list[tuple]:
    """(input batch, FP32 output) pairs, computed once and reused for every candidate."""
    import torch

    with torch.no_grad():
        return [(batch, model(*(torch.from_numpy(a) for a in batch)).float().numpy())
                for batch in _batches(feeds, inputs, 50 if batched else 1)]


def score_module(module, pairs: list[tuple], tol: Tolerance, stage: str = "pt2e-int8") -> Comparison:
    """A converted module (Q/DQ simulated in PyTorch) against precomputed FP32 outputs."""
    import torch

    comp = Comparison(stage=stage, runner="torch-pt2e", precision="int8", tolerance=tol)
    with torch.no_grad():
        for batch, ref in pairs:
            out = module(*(torch.from_numpy(a) for a in batch))
            comp.add({"output": ref}, {"output": out.float().numpy()})
    return comp


def float_ladder(weighted: Sequence[str], max_float: int) -> list[list[str]]:
    """Candidate sets of float layers, smallest first: the first k weighted layers, k = 2, 4, 8 …
    up to ``max_float``."""
    out, k = [], 2
    while k <= max_float and k < len(weighted):
        out.append(list(weighted[:k]))
        k *= 2
    return out


def choose_float_layers(cal: Calibrated, model, feeds: Feeds, inputs: tuple[InputSpec, ...], tol: Tolerance,
                        max_float: int, log: Callable[[str], None] = print):
    """Convert with everything quantized; if the simulated gate fails on ``feeds``, try the
    largest float set (``max_float`` leading layers) and, only if that passes, the smaller
    ones in between, keeping the smallest that passes. When none passes, the all-INT8 module
    is kept: float layers that do not buy a passing gate would only cost latency.
    Returns (module, float node names, trials)."""
    pairs = reference_outputs(model, feeds, inputs, cal.batched)
    names = [n for n, _ in cal.weighted]
    trials: list[dict[str, Any]] = []

    def trial(float_nodes: list[str]):
        module = cal.convert(float_nodes)
        comp = score_module(module, pairs, tol)
        p = comp.primary()
        trials.append({"float_layers": len(float_nodes), "top1": p.top1, "cosine": round(p.cosine, 6),
                       "sqnr_db": round(p.sqnr_db, 2), "passed": comp.passed, "rows": p.rows or p.samples})
        if not comp.passed:
            log(f"INT8 (simulated) with {len(float_nodes)} float layer(s): {'; '.join(comp.failures)}")
        return module, comp.passed

    base, ok = trial([])
    ladder = float_ladder(names, max_float)
    if ok or not ladder:
        return base, [], trials
    best, ok = trial(ladder[-1])
    if not ok:
        log(f"keeping every layer INT8: {len(ladder[-1])} float layer(s) do not pass the gate either")
        return base, [], trials
    chosen = ladder[-1]
    for float_nodes in ladder[:-1]:
        module, ok = trial(float_nodes)
        if ok:
            return module, float_nodes, trials
    return best, chosen, trials
