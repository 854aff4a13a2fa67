"""edgekit's activation ranges and float layers, carried into a PT2E (XNNPACK) program.

:mod:`calibration.torch_transfer` carries edgekit's INT8 *weights* into PyTorch. This module
carries the rest of the calibration that XNNPACK can express:

* **Activation ranges.** edgekit chose each tensor's clipping range by output error (MSE,
  percentile or entropy per tensor, ``calibration/ranges.py``) and wrote it as the scale of the
  Q/DQ pair on the input of each Conv/Gemm. PT2E's ``HistogramObserver`` picks its own. Here
  the observer of every tensor that feeds a weighted layer takes edgekit's clip (±127 × scale),
  intersected with the range the observer saw, so XNNPACK's asymmetric int8 spends its 256
  levels on that interval (a ReLU6 output gets [0, 6], twice the resolution of the shared
  graph's symmetric step). Tensors the shared graph keeps in float (a projection's output before
  its residual add) have no edgekit range; their observers keep PT2E's choice.
* **Float layers XNNPACK can run.** XNNPACK runs a float convolution that reads a dequantized
  tensor, but ExecuTorch's ``InsertPadQDQPass`` re-quantizes a zero pad that reads one, and the
  conv behind it then fails to lower ("Weight and Input should both be quantized"). A float
  layer behind a pad therefore also needs its producer in float (an expand 1x1 before a padded
  depthwise conv, as a rule).

Measured on pretrained EfficientNet-Lite0 (PT2E simulation, 200 held-out crops, SQNR vs FP32):
PT2E's observers with 3 of edgekit's 6 float layers 21.0 dB; all 6 float 24.0 dB; all 6 float
and edgekit's ranges 24.7 dB (docs/mobile.md has the exported figures).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np


def input_ranges(layers: dict[str, Any]) -> dict[str, float]:
    """Module path → edgekit's clip of the tensor the layer reads (``LayerWeights.input_clip``)."""
    return {path: lw.input_clip for path, lw in layers.items() if lw.input_clip}


def output_ranges(layers: dict[str, Any]) -> dict[str, float]:
    """Module path → edgekit's clip of the layer's output where a residual add reads it
    (``LayerWeights.output_clip``: a calibration with ``Int8Options(add_inputs=True)``)."""
    return {path: lw.output_clip for path, lw in layers.items() if lw.output_clip}


def input_grids(layers: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """Module path → the int8 grid (scale, zero point) of the Q/DQ pair on the layer's input."""
    return {path: lw.input_grid for path, lw in layers.items() if lw.input_grid}


def output_grids(layers: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """Module path → the int8 grid of the Q/DQ pair through which a residual add reads its output."""
    return {path: lw.output_grid for path, lw in layers.items() if lw.output_grid}


def sensitivity_order(source: Any, layers: dict[str, Any]) -> list[str]:
    """Module paths of the Q/DQ stage's weighted layers, most INT8-sensitive first: the
    calibration's per-layer SQNR ranking (``source.meta["sensitivity"]``, by ONNX node), named
    through ``layers`` (:func:`calibration.torch_transfer.read_qdq` of the same stage)."""
    by_node = {lw.node: path for path, lw in layers.items() if lw.node}
    ranking = (getattr(source, "meta", None) or {}).get("sensitivity") or []
    ranked = sorted((r for r in ranking if r.get("node") in by_node), key=lambda r: r.get("sqnr_db", 0.0))
    return [by_node[r["node"]] for r in ranked]


def _ops():
    """(clamps a weighted layer's output passes through, pads, weighted ops): PT2E's op sets
    (:func:`exporters.executorch.quant._targets`) with ``relu6``, which ``F.relu6`` exports to."""
    import torch

    from .quant import _targets

    aten = torch.ops.aten
    clamps, weighted = _targets()
    return clamps | {aten.relu6.default}, {aten.pad.default, aten.constant_pad_nd.default}, weighted


def output_layers(gm, weighted: Sequence[Any]) -> list[str]:
    """Names of the weighted nodes whose output reaches a graph output with no other weighted
    node in between (the classifier, as a rule).

    XNNPACK's quantized linear and convolution write an int8 output, so a quantized classifier
    hands back logits on 256 levels, over a range PT2E's histogram observer chooses by squared
    error. That range clips the few large logits, the winning class among them: clipped to the
    same top value, two classes tie and the first index wins. torchvision's MobileNetV2's FP32
    logits alone, quantized over their full range (step 0.12), flip 1.5 % of 200 held-out crops;
    over 0.8 of it, 6.5 %. Its uint8-calibrated .pte, whose classifier the fallback left INT8:
    86.5 % top-1 / 24.0 dB with int8 logits, 87.0 % / 24.2 dB with float ones (2026-12-05; the
    rest of its gap was float layers reading int8 inputs, see :func:`float_closure`). The shared
    graph and every other target keep the model's outputs float; so does this one (a linear as
    XNNPACK's dynamically quantized linear, with INT8 weights: :func:`.quant.calibrate`)."""
    names = {n.name for n in weighted}
    out: set[str] = set()
    stack = [a for n in gm.graph.nodes if n.op == "output" for a in n.all_input_nodes]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in seen or node.op not in ("call_function", "call_module", "call_method"):
            continue
        seen.add(node)
        if node.name in names:
            out.add(node.name)
            continue
        stack.extend(node.all_input_nodes)
    return [n.name for n in weighted if n.name in out]


def float_closure(gm, wanted: Iterable[str], weighted: Sequence[Any],
                  float_inputs: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(float nodes, producers added, wanted nodes that stay INT8) for XNNPACK.

    A wanted layer is runnable in float when its input reaches it without a pad, or through a
    pad from the graph input or from a layer that is float too; in the last case the producer
    (itself runnable) is added.

    ``float_inputs``: also add the weighted layer that writes a wanted layer's input (through
    clamps and pads, read by nothing else). XNNPACK quantizes the output of every INT8 layer, so
    a float layer behind an INT8 one still reads an int8 tensor, on a range PT2E's histogram
    observer chose (the shared graph has no range for it: there that input is float). The shared
    graph's fallback keeps a layer in float *with* its input, and the layers it picks are mostly
    those whose input is the problem: a projection behind a depthwise convolution whose
    activations are small next to the tensor's range. Measured on torchvision's MobileNetV2
    (signed calibration, 18 float layers, 200 held-out crops, 2026-12-05): the .pte against the
    shared graph 26.2 dB without the producers, 27.0 dB with them (25 float layers)."""
    clamps, pads, _ = _ops()
    names = {n.name: n for n in weighted}
    wanted = [n for n in wanted if n in names]
    chosen: set[str] = set()
    added: list[str] = []

    def source(node):
        """(node the weighted layer reads through clamps and pads, whether a pad was crossed,
        whether anything on the way, or that node, has other readers)."""
        src, padded, shared = node.args[0] if node.args else None, False, False
        while getattr(src, "op", None) == "call_function" and src.target in clamps | pads:
            padded = padded or src.target in pads
            shared = shared or len(src.users) > 1
            src = src.args[0]
        return src, padded, shared or len(getattr(src, "users", ())) > 1

    def runnable(name: str, depth: int = 0) -> bool:
        if name in chosen:
            return True
        src, padded, shared = source(names[name])
        prev = getattr(src, "name", None)
        if float_inputs and depth == 0 and prev in names and not shared and prev not in chosen \
                and runnable(prev, depth + 1):
            chosen.add(prev)
            added.append(prev)
        if not padded or getattr(src, "op", None) == "placeholder":
            return True
        if prev in chosen:
            return True
        if depth < 2 and prev in names and not shared and runnable(prev, depth + 1):
            chosen.add(prev)
            added.append(prev)
            return True
        return False

    kept = []
    for name in wanted:
        if runnable(name):
            chosen.add(name)
        else:
            kept.append(name)
    order = [n.name for n in weighted]
    return [n for n in order if n in chosen], [n for n in added if n not in wanted], kept


def observer_consumers(prepared) -> dict[int, list[set[str]]]:
    """id(observer module) → for each tensor it observes (a module shared by a spec such as an
    average pool's input and output observes several), the module paths of the weighted layers
    that read that tensor, through pads and further observers."""
    from .quant import module_path

    _, pads, weighted = _ops()

    out: dict[int, list[set[str]]] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        mod = getattr(prepared, node.target)
        readers: set[str] = set()
        out.setdefault(id(mod), []).append(readers)
        stack, seen = list(node.users), {node}
        while stack:
            user = stack.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module" or (user.op == "call_function" and user.target in pads):
                stack.extend(user.users)
            elif user.op == "call_function" and user.target in weighted and user.args and user.args[0] in seen:
                readers.add(module_path(user))
    return out


def _output_clip(observer, outputs: dict[str, float] | None, weighted) -> float | None:
    """edgekit's clip of the weighted layer whose output ``observer`` (a prepared graph node)
    observes, where ``outputs`` has one."""
    from .quant import module_path

    producer = observer.args[0] if observer.args else None
    if not outputs or getattr(producer, "op", None) != "call_function" or producer.target not in weighted:
        return None
    return outputs.get(module_path(producer))


def _exact_grid(node, tensors, grids, out_grids, weighted, module_path) -> tuple[float, int] | None:
    """The one int8 grid of the shared graph's Q/DQ pairs on the tensor(s) ``node`` observes: the
    readers' input grid when every tensor it observes feeds weighted layers that all have the
    same one, else the producer's output grid (a projection's output before its residual add)."""
    if tensors and all(any(p in grids for p in readers) for readers in tensors):
        found = {grids.get(p) for readers in tensors for p in readers}
    else:
        producer = node.args[0] if node.args else None
        if getattr(producer, "op", None) != "call_function" or producer.target not in weighted:
            return None
        found = {out_grids.get(module_path(producer))}
    return found.pop() if len(found) == 1 and None not in found else None


def _pin(mod, scale: float, zero: int) -> None:
    import torch

    mod.calculate_qparams = (lambda s=scale, z=zero: (torch.tensor([s], dtype=torch.float32),
                                                      torch.tensor([z], dtype=torch.int32)))


def pin_activations(prepared, ranges: dict[str, float], outputs: dict[str, float] | None = None,
                    grids: dict[str, tuple[float, int]] | None = None,
                    out_grids: dict[str, tuple[float, int]] | None = None) -> int:
    """Give the activation observers edgekit's ranges.

    With ``grids`` (module path → the int8 grid of the Q/DQ pair on that layer's input) and
    ``out_grids`` (likewise on a weighted layer's output that a residual add reads): an observer
    whose tensor the shared graph quantizes takes that very grid, scale and zero point (a uint8
    pair's shifted by -128: the same values), so XNNPACK rounds where the shared graph rounds.
    Otherwise (and for observers without a grid) every observer whose tensor feeds a layer in
    ``ranges`` takes edgekit's clip ∩ its observed [min, max] in XNNPACK's asymmetric int8;
    ``outputs`` likewise for a projection's output before its residual add.
    An observer shared by several tensors is pinned only when each of them feeds such a layer:
    a squeeze-excite average pool shares its input's observer, and the pooled vector's clip
    would saturate the feature map (untrained MobileNetV3: 0.5 dB from the shared graph).
    Returns how many observers were pinned."""
    import torch
    from torchao.quantization.pt2e.observer import ObserverBase

    from .quant import module_path

    consumers = observer_consumers(prepared)
    _, _, weighted = _ops()
    pinned, done = 0, set()
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        mod = getattr(prepared, node.target)
        if id(mod) in done or not isinstance(mod, ObserverBase) or getattr(mod, "ch_axis", None) is not None:
            continue
        done.add(id(mod))
        if not hasattr(mod, "min_val") or mod.min_val.numel() != 1:
            continue
        tensors = consumers.get(id(mod), [])
        qmin, qmax = int(mod.quant_min), int(mod.quant_max)
        if grids is not None and (qmin, qmax) == (-128, 127):
            grid = _exact_grid(node, tensors, grids, out_grids or {}, weighted, module_path)
            if grid is not None:
                _pin(mod, *grid)
                pinned += 1
                continue
        per_tensor = [[ranges[p] for p in readers if p in ranges] for readers in tensors]
        if tensors and all(per_tensor):
            clips = [c for cs in per_tensor for c in cs]
        else:
            own = _output_clip(node, outputs, weighted)
            if own is None:
                continue
            clips = [own]
        clip = max(clips)
        lo = min(max(float(mod.min_val), -clip), 0.0)
        hi = max(min(float(mod.max_val), clip), 0.0)
        scale = max((hi - lo) / (qmax - qmin), float(torch.finfo(torch.float32).eps))
        _pin(mod, scale, int(np.clip(qmin - round(lo / scale), qmin, qmax)))
        pinned += 1
    return pinned
