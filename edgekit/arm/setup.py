"""``edgekit arm setup``: build the emulated aarch64 userland once, reuse it afterwards.

Layout of the cache folder (``$EDGEKIT_ARM_CACHE`` or ``~/.cache/edgekit/arm``)::

    debs/                    debootstrap's package cache (a rebuild downloads nothing)
    bookworm-arm64/root/     the Debian arm64 userland, with /opt/edgekit/venv
    bookworm-arm64/stamp.json  release, arch, the pinned runtime versions

How the userland is built without emulating its installation: edgekit/arm/rootfs.py.
A first build goes to ``.bookworm-arm64.tmp-PID`` and is renamed into place when complete;
adding a runtime or following a host upgrade rebuilds only the venv, also beside the old one
and swapped in by rename. A second run with the same pins reads the stamp and returns.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from ..errors import EdgekitError, UsageError
from . import DEBIAN_ARCH, DEFAULT_RELEASE
from . import chroot as ch
from . import rootfs
from .prereq import Host, register_binfmt, require

# runtime -> the PyPI distributions pinned to the host's versions (numpy is always pinned).
# ExecuTorch is not here: see UNSUPPORTED in .job.
RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "ncnn": ("ncnn",),
}


def cache_base() -> Path:
    env = os.environ.get("EDGEKIT_ARM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgekit" / "arm"


@dataclass(frozen=True)
class Userland:
    """Where a userland lives; ``ready`` when its stamp exists."""

    folder: Path
    release: str = DEFAULT_RELEASE
    arch: str = "aarch64"

    @classmethod
    def default(cls, release: str = DEFAULT_RELEASE, arch: str = "aarch64") -> "Userland":
        return cls(cache_base() / f"{release}-{DEBIAN_ARCH[arch]}", release, arch)

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def stamp_path(self) -> Path:
        return self.folder / "stamp.json"

    def stamp(self) -> dict | None:
        try:
            return json.loads(self.stamp_path.read_text())
        except (OSError, ValueError):
            return None

    @property
    def ready(self) -> bool:
        return self.stamp() is not None and self.root.is_dir()

    def runtimes(self) -> list[str]:
        s = self.stamp() or {}
        return [r for r in RUNTIMES if all(p in s.get("pins", {}) for p in RUNTIMES[r])]


def _bare(version: str) -> str:
    return version.split("+", 1)[0]  # torch 2.13.0+cpu -> 2.13.0: PyPI's aarch64 wheel has no local tag


def host_pins(runtimes: list[str]) -> dict[str, str]:
    """The host's installed version of every distribution the runtimes need."""
    pins = {}
    for r in runtimes:
        if r not in RUNTIMES:
            raise UsageError(f"unknown ARM runtime '{r}'", hint=f"choose from {', '.join(RUNTIMES)}")
        for dist in (*RUNTIMES[r], "numpy"):
            try:
                pins[dist] = _bare(metadata.version(dist))
            except metadata.PackageNotFoundError:
                raise UsageError(f"{dist} is not installed on the host, so there is no version to pin for '{r}'",
                                 hint=f"pip install {dist} on the host first, or leave '{r}' out") from None
    return pins


def setup(runtimes: list[str], *, release: str = DEFAULT_RELEASE, arch: str = "aarch64",
          host: Host | None = None, log: Callable[[str], None] = print, step=None) -> Userland:
    """Build or update the userland; returns it. ``step`` is a Console.step-like context manager."""
    host = host or Host.current()
    pins = host_pins(runtimes)
    require(host, building=True, what="set up the aarch64 userland")  # before anything is written
    land = Userland.default(release, arch)
    stamp = land.stamp()
    if stamp and land.root.is_dir() and all(stamp.get("pins", {}).get(k) == v for k, v in pins.items()):
        log(f"aarch64 userland up to date: {land.folder} ({_pins_text(stamp['pins'])})")
        _ensure_binfmt(host, log)
        return land
    step = step or _plain_step(log)
    base = cache_base()
    base.mkdir(parents=True, exist_ok=True)
    _ensure_binfmt(host, log)
    logfile = base / "setup.log"
    if stamp and land.root.is_dir():
        keep = {k: v for k, v in stamp.get("pins", {}).items() if k not in pins}
        _rebuild_venv(land, {**keep, **pins}, step, logfile)
    else:
        _full_build(land, pins, release, step, logfile, log)
    return land


def _plain_step(log):
    import contextlib

    @contextlib.contextmanager
    def step(title):
        log(f"• {title} ...")
        t0 = time.perf_counter()
        d: dict = {}
        yield d
        log(f"  done in {time.perf_counter() - t0:.1f}s" + (f" — {d['summary']}" if d.get("summary") else ""))
    return step


def _ensure_binfmt(host: Host, log) -> None:
    if register_binfmt(host):
        log("registered qemu-aarch64-static with binfmt_misc (flags: F)")


def _full_build(land: Userland, pins: dict[str, str], release: str, step, logfile: Path, log) -> None:
    tmp = land.folder.parent / f".{land.folder.name}.tmp-{os.getpid()}"
    ch.remove_tree(tmp)
    try:
        root = tmp / "root"
        root.parent.mkdir(parents=True)
        debs = cache_base() / "debs"
        debs.mkdir(exist_ok=True)
        with step(f"debootstrap --foreign {release} arm64 (minbase + python3, unpacked on the host)") as d:
            rootfs.debootstrap_foreign(root, release, DEBIAN_ARCH[land.arch], debs, logfile)
            n = rootfs.unpack_included(root, logfile)
            d["summary"] = f"{_du_mb(root)} MB, {n} packages unpacked beside the required ones"
        _build_venv(root, ch.VENV, pins, step, logfile, arch=land.arch, stdlib=True)
        _write_stamp(tmp, land, pins, root)
        ch.remove_tree(land.folder)
        os.rename(tmp, land.folder)
    except BaseException:
        ch.remove_tree(tmp)
        raise
    log(f"aarch64 userland ready: {land.folder}")


def _rebuild_venv(land: Userland, pins: dict[str, str], step, logfile: Path) -> None:
    new, old = f"{ch.VENV}.tmp", f"{ch.VENV}.old"
    shutil.rmtree(land.root / new.lstrip("/"), ignore_errors=True)
    shutil.rmtree(land.root / old.lstrip("/"), ignore_errors=True)
    try:
        _build_venv(land.root, new, pins, step, logfile, arch=land.arch, final=ch.VENV)
    except BaseException:
        shutil.rmtree(land.root / new.lstrip("/"), ignore_errors=True)
        raise
    cur = land.root / ch.VENV.lstrip("/")
    if cur.exists():
        os.rename(cur, land.root / old.lstrip("/"))
    os.rename(land.root / new.lstrip("/"), cur)
    shutil.rmtree(land.root / old.lstrip("/"), ignore_errors=True)
    _write_stamp(land.folder, land, pins, land.root)


def _build_venv(root: Path, venv: str, pins: dict[str, str], step, logfile: Path, *, arch: str,
                final: str | None = None, stdlib: bool = False) -> None:
    """The venv at ``venv`` (userland path; ``final``: where it will live), filled by the host's pip
    (edgekit/arm/rootfs.py); ``stdlib``: byte-compile the userland's standard library too."""
    python = rootfs.python_version(root)
    if python is None:
        raise EdgekitError(f"no python3 in the userland at {root}", hint="remove it and rerun 'edgekit arm setup'")
    with step(f"venv {final or venv} + {_pins_text(pins)} (aarch64 wheels, the host's pip)") as d:
        site = rootfs.make_venv(root, venv, python)
        rootfs.host_pip_install(site, pins, rootfs.platform_tags(root, arch), python, logfile)
        site_in = "/" + str(site.relative_to(root))
        dirs, as_dirs = [site_in], [site_in.replace(venv, final or venv, 1)]
        if stdlib:
            dirs.append(f"/usr/lib/python{python}")
            as_dirs.append(dirs[-1])
        who = rootfs.byte_compile(root, dirs, python, logfile, as_dirs)
        d["summary"] = f"{_du_mb(root / venv.lstrip('/'))} MB, byte-compiled by {who}"


def _write_stamp(folder: Path, land: Userland, pins: dict[str, str], root: Path) -> None:
    data = {"schema": "edgekit.arm/1", "release": land.release, "arch": land.arch, "pins": pins,
            "python": rootfs.python_version(root) or "?", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = folder / "stamp.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, folder / "stamp.json")


def _du_mb(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total // 1_000_000


def _pins_text(pins: dict[str, str]) -> str:
    return ", ".join(f"{k}=={v}" for k, v in sorted(pins.items()))
