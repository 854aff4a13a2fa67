"""INT8 for Core ML: W8A8 calibrated in PyTorch with ``LinearQuantizer``, W8 on the program.

Relied on (coremltools 9.0 documentation, read with the docs search):

* W8A8 — "Training-Time Quantization" (docs-guides/source/data-dependent-quantization.html)
  and the ``coremltools.optimize.torch.quantization`` reference: ``LinearQuantizer``
  ``prepare`` inserts fake-quant observers (torch.fx, ``prepare_qat_fx``), ``step`` walks
  the ``milestones`` (observers on, fake quant on, observers off, batch-norm frozen),
  ``finalize`` makes the module that converts to ``quantize`` / ``dequantize`` ops
  (iOS17+). Here the "training" is calibration only: eval-mode forward passes over the
  calibration feeds between two ``step`` calls. ``non_traceable_module_names`` keeps
  modules out of the fx trace. (``linear_quantize_activations``, the Core ML-side
  alternative, needs prediction: macOS.)
* W8 — "API Overview" of optimization (docs-guides/source/opt-quantization-api.html):
  ``coremltools.optimize.coreml.linear_quantize_weights`` with
  ``OpLinearQuantizerConfig(mode="linear_symmetric")``: per-channel int8 weights, weights
  below ``weight_threshold`` (2048) elements stay float; iOS16/17 programs get
  ``constexpr_affine_dequantize``, iOS18 ``constexpr_blockwise_shift_scale``.

Two rewrites make the fx trace faithful to the eval-mode model (both recorded in meta):

* modules that branch on ``self.training`` (stochastic depth) stay leaf modules, else
  fx — tracing in training mode — freezes their random training branch into the graph;
* ``nn.Conv2d`` subclasses whose forward is "static ``F.pad``, then the convolution"
  (TensorFlow-"SAME" convs) become ``ZeroPad2d`` + a plain ``nn.Conv2d`` sharing the
  weights, else fx sees a functional conv that is neither fused with its batch norm nor
  quantized per channel (EfficientNet-Lite0 agreed with FP32 on 55 % of photos so).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import inspect
from itertools import islice
from typing import Any

import numpy as np

from calibration.torch_transfer import LayerWeights, int8_by_weight, pin_observer, weight_fingerprint
from edgekit.contracts import Feeds
from edgekit.errors import ExportError
from edgekit.specs import InputSpec

from .mil.quiet import import_coremltools, quiet_logs

# observers and fake quant on at step 0, observers off at step 1, batch-norm statistics
# frozen from step 0 (calibration never updates them)
W8A8_MILESTONES = [0, 0, 1, 0]
ACTIVATION_OBSERVER = "min_max"
QUIET = ("coremltools", "torch.jit", "torch.fx", "torch.ao", "root")


def _reads_training(m) -> bool:
    """Whether ``m``'s class (outside ``torch.nn``) branches on ``self.training`` in ``forward``."""
    cls = type(m)
    if cls.__module__.startswith("torch."):
        return False
    try:
        return "self.training" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def training_dependent_modules(model) -> list[str]:
    """Parameter-free modules outside ``torch.nn`` whose ``forward`` reads ``self.training``."""
    return [name for name, m in model.named_modules()
            if name and not any(True for _ in m.parameters(recurse=True)) and _reads_training(m)]


@functools.lru_cache(maxsize=None)
def _eval_branch(cls):
    """``cls`` whose ``training`` always reads False (``train()`` cannot set it)."""
    return type(cls.__name__, (cls,), {"training": property(lambda self: False, lambda self, value: None),
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def pin_eval_branches(model):
    """A copy of ``model`` in which each module *with* parameters whose ``forward`` branches on
    ``self.training`` always takes its eval branch, and their names; ``model`` itself when none.

    ``LinearQuantizer.prepare`` traces in training mode, so GoogLeNet's and Inception-v3's
    forward (auxiliary heads and a tuple of logits in training, one tensor in eval) was traced
    with three outputs, and the Core ML conversion of the result failed ("Number of outputs
    provided, 1, do not match the number of outputs detected in the model, 3"). Such a module
    cannot be a leaf of the trace (its convolutions must be quantized), so its class is swapped
    for one whose ``training`` is always False; its children still switch modes as before."""
    names = [name for name, m in model.named_modules()
             if any(True for _ in m.parameters(recurse=True)) and _reads_training(m)]
    if not names:
        return model, []
    model = copy.deepcopy(model)
    for name in names:
        m = model.get_submodule(name)
        m.__class__ = _eval_branch(type(m))
    return model, names


def _static_pad(conv) -> tuple[int, ...] | None:
    """The constant zero padding of a conv subclass whose forward is exactly pad → conv2d."""
    import torch
    import torch.nn.functional as F

    try:
        graph = torch.fx.symbolic_trace(conv).graph
    except Exception:  # data-dependent forward: not ours to rewrite
        return None
    calls = [n for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    if len(calls) != 2 or calls[0].target is not F.pad or calls[1].target not in (torch.conv2d, F.conv2d):
        return None
    pad, convn = calls
    value = pad.kwargs.get("value", pad.args[3] if len(pad.args) > 3 else None)
    mode = pad.kwargs.get("mode", pad.args[2] if len(pad.args) > 2 else "constant")
    amounts = pad.args[1]
    if mode != "constant" or value not in (None, 0, 0.0) or convn.args[0] is not pad:
        return None
    if not (isinstance(amounts, (tuple, list)) and len(amounts) == 4 and all(isinstance(a, int) for a in amounts)):
        return None
    return tuple(amounts)


def standardize_padded_convs(model):
    """A copy of ``model`` with pad-then-conv subclasses as ``ZeroPad2d`` + ``nn.Conv2d``
    (weights shared), and the names replaced; ``model`` itself when there are none."""
    from torch import nn

    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d and type(m).forward is not nn.Conv2d.forward:
            pad = _static_pad(m)
            if pad is not None:
                found.append((name, pad))
    if not found:
        return model, []
    model = copy.deepcopy(model)
    for name, pad in found:
        old = model.get_submodule(name)
        conv = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                         old.groups, old.bias is not None, old.padding_mode)
        conv.weight = old.weight
        conv.bias = old.bias
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, nn.Sequential(nn.ZeroPad2d(pad), conv))
    return model.eval(), [name for name, _ in found]


def quantize_w8a8(model, args, calib: Feeds, inputs: tuple[InputSpec, ...], max_samples: int,
                  layers: dict[str, LayerWeights] | None = None):
    """Calibrated fake-quant module ready to convert, and what was done.

    ``layers`` (from :func:`calibration.torch_transfer.read_qdq`, already written into ``model``
    by :func:`~calibration.torch_transfer.transfer`): edgekit's calibrated weights. Their float
    layers are left unquantized and their per-channel scales replace the observers' after
    calibration, so the package holds edgekit's INT8 weights exactly."""
    import torch

    import_coremltools()
    from coremltools.optimize.torch.quantization import LinearQuantizer, LinearQuantizerConfig

    model, padded = standardize_padded_convs(model.eval())
    model, pinned_eval = pin_eval_branches(model)
    leaves = training_dependent_modules(model)
    # min_max, not the default moving average (averaging constant 0.01, which mostly keeps the
    # first image's range): pretrained Lite0 fake-quant top-1 vs FP32 on 60 held-out photos
    # 83.3 % with min_max, 78.3 % with the default
    spec = {"global_config": {"quantization_scheme": "symmetric", "activation_observer": ACTIVATION_OBSERVER,
                              "milestones": W8A8_MILESTONES},
            "non_traceable_module_names": leaves}
    float_modules = _float_modules(model, layers) if layers else []
    if float_modules:
        spec["module_name_configs"] = {name: None for name in float_modules}
    config = LinearQuantizerConfig.from_dict(spec)
    with quiet_logs(*QUIET):
        quantizer = LinearQuantizer(model, config)
        prepared = quantizer.prepare(example_inputs=args, inplace=False)
        quantizer.step()                      # step 0: observers + fake quant on, BN frozen
        prepared.eval()
        rows = 0
        with torch.no_grad():
            for feed in islice(calib, max_samples):
                prepared(*(torch.from_numpy(np.ascontiguousarray(feed[i.name], dtype=np.float32)) for i in inputs))
                rows += int(np.asarray(feed[inputs[0].name]).shape[0])
        if rows == 0:
            raise ExportError("coreml-int8", "no calibration samples", hint="pass --calib DIR with images")
        quantizer.step()                      # step 1: observers off, ranges frozen
        scaled = _set_weight_scales(prepared, layers) if layers else 0
        pinned, unquantized, unsigned = _match_shared_graph(prepared, layers) if layers else (0, 0, 0)
        final = quantizer.finalize(inplace=False).eval()
    meta = {"mode": "w8a8", "api": "coremltools.optimize.torch.quantization.LinearQuantizer",
            "scheme": "symmetric int8 per-channel weights, uint8/int8 activations (zero point 0 or 128)",
            "milestones": W8A8_MILESTONES, "activation_observer": ACTIVATION_OBSERVER, "calibration_rows": rows,
            "kept_as_modules": leaves, "eval_branch_pinned": pinned_eval, "padded_convs_rewritten": padded,
            "weights": "edgekit calibration" if layers else "coremltools observers (nearest rounding)"}
    if layers:
        quantized = sum(1 for l in layers.values() if l.quantized)
        meta.update({"float_layers": float_modules, "edgekit_weight_layers": scaled, "edgekit_int8_layers": quantized,
                     "activation_ranges_pinned_to_edgekit": pinned,
                     "activation_quantizers_removed": unquantized, "activation_quantizers_unsigned": unsigned})
    return final, meta


def _float_modules(model, layers: dict[str, LayerWeights]) -> list[str]:
    """Names (in ``model``, after the rewrites) of the layers edgekit's calibration kept in float."""
    from torch import nn

    wanted = {weight_fingerprint(lw.weight) for lw in layers.values() if not lw.quantized}
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and weight_fingerprint(m.weight) in wanted]


def _set_weight_scales(prepared, layers: dict[str, LayerWeights]) -> int:
    """Give each weight fake-quant of a transferred INT8 layer edgekit's per-channel scales.

    With the observer pinned by :func:`calibration.torch_transfer.pin_observer` it derives
    ``s``, and the weights (``q * s``, |q| <= 127) quantize back to edgekit's integers
    exactly. Returns how many layers were set."""
    by_weight = int8_by_weight(layers)
    done = 0
    for name, fq in prepared.named_modules():
        if not name.endswith("weight_fake_quant"):
            continue
        owner = prepared.get_submodule(name.rpartition(".")[0])
        lw = by_weight.get(weight_fingerprint(owner.weight))
        if lw is None:
            continue
        pin_observer(fq.activation_post_process, lw.scales)
        scale, zero = fq.calculate_qparams()
        fq.scale.resize_(scale.shape).copy_(scale)
        fq.zero_point.resize_(zero.shape).copy_(zero)
        done += 1
    return done


def _match_shared_graph(prepared, layers: dict[str, LayerWeights]) -> tuple[int, int, int]:
    """Quantize activations where edgekit's shared Q/DQ graph does, with its ranges.

    The shared graph quantizes the input of each INT8 layer only; coremltools' W8A8 puts a
    fake quant at every op's output. Each activation fake quant that feeds a transferred INT8
    layer is clipped to edgekit's range for that input (``LayerWeights.input_clip``, chosen per
    tensor by output error), intersected with the [min, max] its observer saw; the scheme
    (symmetric, zero point 0 or 128) stays coremltools'. Every other activation fake quant (a
    projection's output before its residual add, a tensor between two float layers, the
    logits) is taken out of the graph, as ``convert_fx`` does itself for observers whose
    producer and consumers are all unquantized. A kept quantizer whose tensor never went negative
    takes zero point 0 on all 256 levels, the shared graph's uint8 grid. Returns (clipped, removed,
    unsigned).

    Measured on pretrained Lite0 (fake-quant module, 200 held-out crops): coremltools' ranges
    23.5 dB, edgekit's ranges 24.8 dB, and without the 20 other quantizers 25.5 dB (docs/coreml.md)."""
    import torch

    by_weight = {weight_fingerprint(lw.weight): lw for lw in layers.values() if lw.input_clip}

    def module(node):
        # get_submodule, not named_modules(): a fake quant shared by two ops (an average pool's
        # input and output) is registered under two names and named_modules() lists it once
        return prepared.get_submodule(node.target) if node.op == "call_module" else None

    def clip_of(node) -> float | None:
        clips, stack, seen = [], list(node.users), set()
        while stack:
            user = stack.pop()
            if user in seen or user.op != "call_module":
                continue
            seen.add(user)
            mod = module(user)
            weight = getattr(mod, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
                lw = by_weight.get(weight_fingerprint(weight))
                if lw is not None:
                    clips.append(lw.input_clip)
            elif type(mod).__name__ in ("ZeroPad2d", "ConstantPad2d") or hasattr(mod, "activation_post_process"):
                stack.extend(user.users)
        return max(clips) if clips else None

    kept: dict[int, tuple[Any, list[float]]] = {}
    removed = unsigned = 0
    for node in list(prepared.graph.nodes):
        fq = module(node)
        obs = getattr(fq, "activation_post_process", None)
        if obs is None or getattr(obs, "ch_axis", -1) != -1 or not hasattr(obs, "min_val") or obs.min_val.numel() != 1:
            continue
        clip = clip_of(node)
        if clip is None:
            node.replace_all_uses_with(node.args[0])
            prepared.graph.erase_node(node)
            removed += 1
        else:
            kept.setdefault(id(fq), (fq, []))[1].append(clip)
    for fq, clips in kept.values():  # a shared fake quant takes the widest clip of the tensors it still quantizes
        obs = fq.activation_post_process
        obs.min_val.clamp_(min=-max(clips))
        obs.max_val.clamp_(max=max(clips))
        if float(obs.min_val) >= 0 and obs.dtype == torch.quint8:
            # a tensor that never went negative: [0, clip] on all 256 levels (zero point 0), the
            # shared graph's uint8 grid, instead of the symmetric scheme's 128
            fq.qscheme = obs.qscheme = torch.per_tensor_affine
            unsigned += 1
        scale, zero = fq.calculate_qparams()
        fq.scale.resize_(scale.shape).copy_(scale)
        fq.zero_point.resize_(zero.shape).copy_(zero)
    if removed:
        prepared.recompile()
    return len(kept), removed, unsigned


def quantize_weights(mlmodel) -> tuple[Any, dict[str, Any]]:
    """Weight-only INT8 (``linear_quantize_weights``, symmetric per-channel)."""
    import_coremltools()
    import coremltools.optimize as cto

    config = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric"))
    with quiet_logs(*QUIET), contextlib.redirect_stderr(io.StringIO()):
        model = cto.coreml.linear_quantize_weights(mlmodel, config=config)
    return model, {"mode": "w8", "api": "coremltools.optimize.coreml.linear_quantize_weights",
                   "scheme": "linear_symmetric int8 per-channel weights, float activations",
                   "weight_threshold": 2048}
