"""Published checkpoints through ``torch.hub``: hash-checked download into the standard hub
cache (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``, shared
with torchvision), and the cached file used without network.

``torch.hub.download_url_to_file(hash_prefix=...)`` downloads to a temporary file beside
the destination, checks the sha256 prefix, and only then renames it into place: a
tampered or truncated download is refused and never left in the cache. A cached file is
hashed again before use (its full sha256 goes into the manifest). Offline and not
cached: one line naming the file, the URL and the folder to put it in; nothing written.
"""
from __future__ import annotations

import socket
from pathlib import Path

import torch

from ..errors import WeightsError
from .weights_registry import PublishedWeights

TIMEOUT_S = 30.0   # per socket operation: an offline machine that drops packets fails instead of hanging


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch(entry: PublishedWeights, console=None) -> tuple[Path, str]:
    """(path of the verified checkpoint in the hub cache, its sha256)."""
    from ..artifact import sha256_path

    folder = cache_dir()
    path = folder / entry.filename
    if path.is_file():
        digest = sha256_path(path)
        if not digest.startswith(entry.sha256_prefix):
            raise WeightsError(f"cached {path} has sha256 {digest[:12]}…, not the published {entry.sha256_prefix}…",
                               hint=f"delete it (edgekit downloads it again) or replace it with {entry.url}")
        return path, digest
    if console:
        console.info(f"downloading {entry.url} to {folder}")
    created = _missing_parents(folder)
    old_timeout = socket.getdefaulttimeout()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(TIMEOUT_S)
        torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=entry.sha256_prefix, progress=False)
    except RuntimeError as exc:  # torch.hub: 'invalid hash value (expected "…", got "…")'
        _remove_empty(created)
        raise WeightsError(f"{entry.filename} from {entry.url} failed its sha256 check ({str(exc).strip()}); "
                           f"refused, nothing kept in {folder}") from None
    except OSError as exc:  # URLError, HTTPError, refused connection, timeout, no DNS
        _remove_empty(created)
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"cannot download {entry.filename} ({reason}): fetch {entry.url} and put it in {folder}") \
            from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return path, sha256_path(path)


def _missing_parents(folder: Path) -> list[Path]:
    """The folders a ``mkdir(parents=True)`` of ``folder`` would create, deepest first."""
    out = []
    while not folder.exists():
        out.append(folder)
        folder = folder.parent
    return out


def _remove_empty(created: list[Path]) -> None:
    """Undo our own ``mkdir`` after a failed download (only folders we made, only if empty)."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return
