"""What the host must provide before an aarch64 userland can be built or used.

:func:`missing` is a pure check over a :class:`Host` (euid, the binfmt_misc folder, a
``which``), so tests can ask it about a host without root or without binfmt_misc. Callers
raise :class:`~edgekit.errors.UnavailableError` before they write anything.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UnavailableError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU = "qemu-aarch64-static"
BINFMT_NAME = "qemu-aarch64"
# ELF64, little endian, e_machine 0xb7 (EM_AARCH64): the magic/mask Debian's qemu-user-static registers
MAGIC = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
MASK = b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


@dataclass(frozen=True)
class Host:
    """The facts the checks read; :meth:`current` reads this machine."""

    euid: int
    binfmt_dir: Path = BINFMT_DIR
    which: Callable[[str], str | None] = field(default=shutil.which)

    @classmethod
    def current(cls) -> "Host":
        return cls(euid=os.geteuid() if hasattr(os, "geteuid") else -1)


@dataclass(frozen=True)
class Missing:
    what: str
    hint: str


def binfmt_entry(host: Host) -> dict[str, str] | None:
    """The registered qemu-aarch64 handler as {'enabled', 'interpreter', 'flags'}, or None."""
    path = host.binfmt_dir / BINFMT_NAME
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    out = {"enabled": lines[0].strip() if lines else ""}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        out[key.rstrip(":")] = value.strip()
    return out


def missing(host: Host | None = None, *, building: bool) -> list[Missing]:
    """Everything absent, in the order a user would fix it. ``building``: also needs debootstrap and dpkg-deb,
    and a missing binfmt handler is not a problem (setup registers it)."""
    host = host or Host.current()
    out: list[Missing] = []
    if host.euid != 0:
        out.append(Missing(f"not root (euid {host.euid}): debootstrap and chroot need root",
                           "run it as root, e.g. 'sudo edgekit arm setup'"))
    if not (host.binfmt_dir / "register").exists():
        out.append(Missing(f"binfmt_misc is not mounted at {host.binfmt_dir}",
                           f"mount -t binfmt_misc binfmt_misc {host.binfmt_dir}"))
    if host.which(QEMU) is None:
        out.append(Missing(f"{QEMU} not found", "apt-get install qemu-user-static"))
    if building and host.which("debootstrap") is None:
        out.append(Missing("debootstrap not found", "apt-get install debootstrap"))
    if building and host.which("dpkg-deb") is None:   # unpacks the included packages (rootfs.py)
        out.append(Missing("dpkg-deb not found", "apt-get install dpkg"))
    if (host.binfmt_dir / "register").exists():
        entry = binfmt_entry(host)
        if entry is None and not building:
            out.append(Missing("no qemu-aarch64 binfmt handler is registered", "run 'edgekit arm setup'"))
        elif entry is not None and "F" not in entry.get("flags", ""):
            out.append(Missing("the qemu-aarch64 binfmt handler lacks the F flag (needed inside a chroot)",
                               f"echo -1 > {host.binfmt_dir / BINFMT_NAME}; then rerun 'edgekit arm setup'"))
        elif entry is not None and entry.get("enabled") != "enabled":
            out.append(Missing("the qemu-aarch64 binfmt handler is disabled",
                               f"echo 1 > {host.binfmt_dir / BINFMT_NAME}"))
    return out


def require(host: Host | None = None, *, building: bool, what: str) -> None:
    """Raise one UnavailableError (exit 2) naming every missing prerequisite."""
    gaps = missing(host, building=building)
    if gaps:
        raise UnavailableError(f"cannot {what}: " + "; ".join(g.what for g in gaps),
                               hint="; ".join(g.hint for g in gaps))


def register_binfmt(host: Host) -> bool:
    """Register qemu-aarch64-static with the F flag (the kernel opens the interpreter now, so it
    works inside a chroot without a copy of qemu there). False when already registered."""
    if binfmt_entry(host) is not None:
        return False
    qemu = host.which(QEMU)
    line = b":" + BINFMT_NAME.encode() + b":M::" + _escape(MAGIC) + b":" + _escape(MASK) + b":" + \
        str(qemu).encode() + b":F"
    (host.binfmt_dir / "register").write_bytes(line)
    return True


def _escape(data: bytes) -> bytes:
    return b"".join(b"\\x%02x" % c for c in data)
