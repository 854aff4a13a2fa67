"""Parity on ARM kernels without a board: an emulated aarch64 userland (issue 24).

* :mod:`.prereq` — what the host must provide (root, binfmt_misc, qemu-user-static,
  debootstrap), checked before anything is written.
* :mod:`.setup` — ``edgekit arm setup``: debootstrap a Debian arm64 userland once into a
  cache folder, with a venv whose runtimes are pinned to the host's versions.
* :mod:`.chroot` — run edgekit's runner script inside it under ``qemu-aarch64`` (``QEMU_CPU``
  picks the emulated core); feeds and outputs cross the boundary as ``.npy`` files.
* :mod:`.runner_script` — the only edgekit code executed inside: NumPy + the runtime.
* :mod:`.compare` — the x86-vs-aarch64 rows of the parity table.

Nothing here imports a runtime at import time.
"""
from __future__ import annotations

ARCHES = ("aarch64",)
DEFAULT_RELEASE = "bookworm"
DEBIAN_ARCH = {"aarch64": "arm64"}
