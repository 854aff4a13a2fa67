"""edgekit's calibrated INT8 weights, carried from the Q/DQ ONNX into a PyTorch model.

Quantizers that calibrate in PyTorch (coremltools' ``LinearQuantizer`` for Core ML W8A8) round
each weight to its nearest grid point. edgekit's calibration rounds each layer for its output
(GPTQ-style, with bias correction; ``calibration/weights.py``) and picks the layers to keep in
float. This module reads those results from the Q/DQ ONNX — the INT8 weights, their per-channel
scales, the corrected biases, the float layers — by the PyTorch parameter names the exporter
keeps, and writes them into a copy of the model with its batch norms folded, so that a PyTorch
quantizer told to use the same scales reproduces edgekit's integers exactly.

Measured on the pretrained EfficientNet-Lite0 (200 held-out photo crops, fake-quantized
PyTorch; docs/coreml.md): coremltools' W8A8 with its own weights 83% top-1 agreement with FP32;
with edgekit's weights and float layers, see the figures in that document.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import CalibrationError

from .graph import consumers
from .qdq import INT8_SUFFIX


@dataclass
class LayerWeights:
    """One weighted layer of the Q/DQ ONNX, named by its PyTorch module."""

    module: str
    weight: np.ndarray              # float weights as the ONNX computes them (q * scale, or float)
    bias: np.ndarray | None
    scales: np.ndarray | None       # per-output-channel scales; None: the layer stays float
    int8: np.ndarray | None = None
    input_clip: float | None = None  # edgekit's symmetric clip (127 × scale) of the input; None: float input
    output_clip: float | None = None  # likewise of its output, where a residual Add reads it quantized
    # The same two Q/DQ pairs as int8 grids, (scale, zero point), a uint8 one shifted by -128 (the
    # same values); floors (h-swish, SiLU: a uint8 zero point above 0) included. None: no pair.
    input_grid: tuple[float, int] | None = None
    output_grid: tuple[float, int] | None = None
    node: str = ""                   # the ONNX node's name (the calibration's sensitivity ranking uses it)

    @property
    def quantized(self) -> bool:
        return self.scales is not None


def read_qdq(path: Path) -> dict[str, LayerWeights]:
    """Every Conv / Gemm of the Q/DQ ONNX whose weight carries a PyTorch parameter name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(init[name])

    readers = consumers(model)

    def output_dq(node):
        """The DequantizeLinear through which an ``Add`` reads the layer's output, if any
        (``Int8Options(add_inputs=True)``)."""
        for q in readers.get(node.output[0], []):
            if q.op_type != "QuantizeLinear":
                continue
            for dq in readers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear" and any(r.op_type == "Add" for r in readers.get(dq.output[0], [])):
                    return dq
        return None

    def grid_of(dq) -> tuple[float, int] | None:
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in init:
            return None
        scale = array(dq.input[1]).reshape(-1)
        if len(dq.input) < 3 or dq.input[2] not in init:
            return None
        zero = array(dq.input[2]).reshape(-1)
        if scale.size != 1 or zero.size != 1 or zero.dtype not in (np.int8, np.uint8):
            return None
        return float(scale[0]), int(zero[0]) - (128 if zero.dtype == np.uint8 else 0)

    def input_clip(node) -> float | None:
        """The threshold of the Q/DQ pair on the layer's input, if it has one: 127 × its scale
        (signed int8) or 255 × its scale (uint8, a tensor that is never negative)."""
        return clip_of(prod.get(node.input[0]))

    def clip_of(dq) -> float | None:
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in init:
            return None
        zero = array(dq.input[2]) if len(dq.input) > 2 and dq.input[2] in init else None
        if zero is not None and (zero.dtype not in (np.int8, np.uint8) or np.any(zero != 0)):
            return None
        steps = 255.0 if zero is not None and zero.dtype == np.uint8 else 127.0
        return steps * float(array(dq.input[1]).reshape(-1)[0])

    layers: dict[str, LayerWeights] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        w_name, dq = node.input[1], prod.get(node.input[1])
        bias = array(node.input[2]) if len(node.input) > 2 and node.input[2] in init else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in init:
            q, s = array(dq.input[0]), array(dq.input[1])
            if s.ndim != 1 or s.shape[0] != q.shape[0]:
                continue  # per-tensor or other axis: not the per-channel form this transfer reproduces
            base = dq.input[0].removesuffix(INT8_SUFFIX)
            w = q.astype(np.float32) * s.reshape((-1,) + (1,) * (q.ndim - 1))
            layer = LayerWeights(_module(base), w, bias, s.astype(np.float32), q)
        elif w_name in init:
            layer = LayerWeights(_module(w_name), array(w_name).astype(np.float32), bias, None)
        else:
            continue
        if layer.module:
            layer.input_clip = input_clip(node) if layer.quantized else None
            out_dq = output_dq(node)
            layer.output_clip = clip_of(out_dq)
            layer.input_grid = grid_of(prod.get(node.input[0])) if layer.quantized else None
            layer.output_grid = grid_of(out_dq)
            layer.node = node.name
            layers[layer.module] = layer
    return layers


def _module(weight_name: str) -> str:
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else ""


def transfer(model, layers: dict[str, LayerWeights], inputs):
    """A copy of ``model`` (eval mode) with each batch norm that follows a transferred conv
    removed and the conv's weight and bias replaced by the ONNX's. Raises when a layer of the
    ONNX has no module of that name and shape (the model is not the one that was exported).

    ``inputs`` (the model's InputSpecs) let one forward pass find which batch norm reads each
    conv's output, wherever the model keeps it: in a Sequential after the conv (ConvNormAct),
    or as an attribute beside it (ResNet's ``conv1``/``bn1``, GoogLeNet's and Inception-v3's
    ``conv``/``bn``): module order alone missed the second kind and ran those batch norms
    twice."""
    import torch
    from torch import nn

    model = copy.deepcopy(model).eval()
    convs = {}
    for name, layer in layers.items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise CalibrationError(f"the Q/DQ ONNX names a layer '{name}' that the PyTorch model lacks") from None
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or tuple(mod.weight.shape) != layer.weight.shape:
            raise CalibrationError(f"layer '{name}' of the Q/DQ ONNX does not match the PyTorch module "
                                   f"({type(mod).__name__} {tuple(getattr(mod, 'weight', torch.empty(0)).shape)} "
                                   f"vs {layer.weight.shape})")
        if isinstance(mod, nn.Conv2d):
            convs[name] = mod
    folded = following_batchnorms(model, convs, inputs)
    for bn_name in folded:
        parent_name, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, nn.Identity())
    for name, layer in layers.items():
        mod = model.get_submodule(name)
        mod.weight = nn.Parameter(torch.from_numpy(layer.weight.copy()))
        out = layer.weight.shape[0]
        b = layer.bias if layer.bias is not None else np.zeros(out, np.float32)
        mod.bias = nn.Parameter(torch.from_numpy(np.asarray(b, np.float32).copy()))
    return model


def following_batchnorms(model, convs: dict, inputs) -> list[str]:
    """Names of the BatchNorm2d modules that read a conv of ``convs`` directly (the ONNX export
    folded them into the weights being transferred), found by one forward pass on zeros: a
    batch norm whose input *is* the conv's output tensor."""
    import torch
    from torch import nn

    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    produced: list = []     # the conv outputs themselves: held, so that no id is reused during the pass
    found: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: produced.append(out)) for m in convs.values()]
    hooks += [m.register_forward_hook(lambda _m, args, _o, n=n: found.extend(
        [n] if any(args[0] is t for t in produced) else [])) for n, m in bns.items()]
    try:
        with torch.no_grad():
            model(*(torch.zeros(tuple(i.shape), dtype=getattr(torch, i.dtype)) for i in inputs))
    finally:
        for h in hooks:
            h.remove()
    return sorted(set(found))


def from_source(source, log, who: str, native: str) -> dict[str, LayerWeights] | None:
    """The layers of the pipeline's Q/DQ stage (``ctx.source``), or None when there is none
    (then ``native``, the target's own quantizer, rounds the weights). ``who`` prefixes the log."""
    if source is None or source.precision != "int8" or source.format != "onnx":
        log(f"{who}: no Q/DQ stage to take weights from; {native} rounds the weights itself")
        return None
    layers = read_qdq(source.path)
    n_float = sum(1 for lw in layers.values() if not lw.quantized)
    log(f"{who}: {len(layers) - n_float} INT8 layers take edgekit's calibrated weights from "
        f"{Path(source.path).name}; its gate kept {n_float} in float")
    return layers


def int8_by_weight(layers: dict[str, LayerWeights]) -> dict[bytes, LayerWeights]:
    """The INT8 layers keyed by :func:`weight_fingerprint` of their (transferred) weights."""
    return {weight_fingerprint(lw.weight): lw for lw in layers.values() if lw.quantized}


def pin_observer(observer, scales: np.ndarray) -> None:
    """Set a per-channel symmetric observer's min/max so that it derives exactly ``scales``:
    torch computes ``scale = max(-min, max) / ((quant_max - quant_min) / 2)``."""
    import torch

    half = (float(observer.quant_max) - float(observer.quant_min)) / 2
    s = torch.from_numpy(np.asarray(scales, np.float32)) * half
    observer.min_val.resize_(s.shape).copy_(-s)
    observer.max_val.resize_(s.shape).copy_(s)


def weight_fingerprint(w) -> bytes:
    """Identifies a weight tensor by its values (quantizers copy modules, not identities)."""
    a = np.ascontiguousarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w, np.float32)
    return bytes(str(a.shape), "ascii") + a.tobytes()
