"""Run a command inside the aarch64 userland: ``chroot`` + a clean environment.

The binfmt handler (registered with the F flag) makes the kernel run every aarch64 ELF in
the chroot under ``qemu-aarch64-static``; qemu reads ``QEMU_CPU`` from the environment, so
the emulated core (and the HWCAP bits the runtimes read to pick their kernels) is chosen per
call. Nothing of the caller's environment crosses: the command gets a fixed PATH, HOME and
locale, plus only what the caller passes in ``env``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import EdgekitError

VENV = "/opt/edgekit/venv"
PYTHON = f"{VENV}/bin/python"
SCRIPT = "/opt/edgekit/run.py"
JOBS = "/tmp/edgekit-jobs"
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def run(root: Path, argv: Sequence[str], *, cpu: str | None = None, env: Mapping[str, str] | None = None,
        timeout: float | None = None, log: Path | None = None) -> subprocess.CompletedProcess:
    """``chroot ROOT ARGV`` with a clean environment. Output goes to ``log`` (appended) when
    given, else it is captured; a non-zero exit is an EdgekitError naming its last line."""
    full_env = {**BASE_ENV, **(env or {})}
    if cpu:
        full_env["QEMU_CPU"] = cpu
    cmd = [shutil.which("chroot") or "/usr/sbin/chroot", str(root), *argv]
    if log is not None:
        with open(log, "ab") as fh:
            fh.write(f"$ {' '.join(argv)}\n".encode())
            fh.flush()
            proc = subprocess.run(cmd, env=full_env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        tail = _tail(log)
    else:
        proc = subprocess.run(cmd, env=full_env, capture_output=True, timeout=timeout)
        tail = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        tail = tail[0]
    if proc.returncode != 0:
        where = f" (log: {log})" if log else ""
        raise EdgekitError(f"'{argv[0]}' in the aarch64 userland exited with {proc.returncode}: {tail[:300]}{where}",
                           hint="rerun 'edgekit arm setup' if the userland is damaged; --debug shows more")
    return proc


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (debootstrap mounts /proc and /sys in its target while it
    works; an interrupted one can leave them), deepest first."""
    base = os.path.realpath(path)
    found = []
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                point = line.split()[1].replace("\\040", " ")
                if point == base or point.startswith(base + "/"):
                    found.append(point)
    except OSError:
        pass
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a (partial) userland: unmount anything mounted inside it first, and refuse to delete
    while a mount remains, so a lingering /proc or /sys bind is never walked into."""
    path = Path(path)
    if not path.exists():
        return
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(path)
    if left:
        raise EdgekitError(f"cannot remove {path}: {left[0]} is still mounted", hint=f"umount {left[0]}")
    shutil.rmtree(path, ignore_errors=True)
