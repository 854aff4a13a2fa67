"""``edgekit arm setup``: build the emulated aarch64 userland once, reuse it afterwards.

Layout of the cache folder (``$EDGEKIT_ARM_CACHE`` or ``~/.cache/edgekit/arm``)::

    debs/                    debootstrap's package cache (a rebuild downloads nothing)
    bookworm-arm64/root/     the Debian arm64 userland, with /opt/edgekit/venv
    bookworm-arm64/stamp.json  release, arch, the pinned runtime versions

A first build goes to ``.bookworm-arm64.tmp-PID`` and is renamed into place when complete;
adding a runtime or following a host upgrade rebuilds only the venv, also beside the old one
and swapped in by rename. A second run with the same pins reads the stamp and returns.
"""
from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from ..errors import EdgekitError, UsageError
from . import DEBIAN_ARCH, DEFAULT_RELEASE
from . import chroot as ch
from .prereq import Host, register_binfmt, require

MIRROR = "http://deb.debian.org/debian"
INCLUDE = "python3,python3-venv,python3-pip,ca-certificates"
# runtime -> the PyPI distributions pinned to the host's versions (numpy is always pinned).
# ExecuTorch is not here: see UNSUPPORTED in .job.
RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "ncnn": ("ncnn",),
}
CA_IN_ROOT = "etc/ssl/certs/ca-certificates.crt"


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


def host_ca_bundle() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for p in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile,
              "/etc/ssl/certs/ca-certificates.crt"):
        if p and Path(p).is_file():
            return Path(p)
    return None


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
        with step(f"debootstrap {release} arm64 (minbase + python3) — a few minutes the first time") as d:
            _host_cmd(["debootstrap", f"--arch={DEBIAN_ARCH[land.arch]}", "--variant=minbase", f"--include={INCLUDE}",
                       f"--cache-dir={debs}", release, str(root), MIRROR], logfile)
            d["summary"] = f"{_du_mb(root)} MB"
        _copy_host_files(root, log)
        _build_venv(root, ch.VENV, pins, step, logfile)
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
        _build_venv(land.root, new, pins, step, logfile)
    except BaseException:
        shutil.rmtree(land.root / new.lstrip("/"), ignore_errors=True)
        raise
    cur = land.root / ch.VENV.lstrip("/")
    if cur.exists():
        os.rename(cur, land.root / old.lstrip("/"))
    os.rename(land.root / new.lstrip("/"), cur)
    shutil.rmtree(land.root / old.lstrip("/"), ignore_errors=True)
    _write_stamp(land.folder, land, pins, land.root)


def _copy_host_files(root: Path, log) -> None:
    ca = host_ca_bundle()
    if ca is not None:
        _copy_in(ca, root / CA_IN_ROOT)
        log(f"  copied the host CA bundle {ca} into the userland")
    if Path("/etc/resolv.conf").is_file():
        _copy_in(Path("/etc/resolv.conf"), root / "etc/resolv.conf")


def _copy_in(src: Path, dest: Path) -> None:
    """Copy a host file into the userland; a symlink at ``dest`` is replaced, never followed (an
    absolute link there points into the host)."""
    if dest.is_symlink():
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _build_venv(root: Path, venv: str, pins: dict[str, str], step, logfile: Path) -> None:
    env = {"PIP_CERT": f"/{CA_IN_ROOT}", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    with step(f"venv {venv} + pip install {_pins_text(pins)} (under emulation)") as d:
        ch.run(root, ["/usr/bin/python3", "-m", "venv", venv], log=logfile)
        ch.run(root, [f"{venv}/bin/python", "-m", "pip", "install", "--only-binary=:all:",
                      *[f"{k}=={v}" for k, v in sorted(pins.items())]], env=env, log=logfile)
        d["summary"] = f"{_du_mb(root / venv.lstrip('/'))} MB"


def _write_stamp(folder: Path, land: Userland, pins: dict[str, str], root: Path) -> None:
    data = {"schema": "edgekit.arm/1", "release": land.release, "arch": land.arch, "pins": pins,
            "python": _python_version(root), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = folder / "stamp.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, folder / "stamp.json")


def _python_version(root: Path) -> str:
    for p in sorted((root / "usr/bin").glob("python3.*")):
        if p.name[len("python3."):].isdigit():
            return p.name[len("python"):]
    return "?"


def _host_cmd(argv: list[str], logfile: Path) -> None:
    with open(logfile, "ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise EdgekitError(f"{argv[0]} exited with {proc.returncode}: {ch._tail(logfile)[:300]}",
                           hint=f"see {logfile}; a proxy or mirror problem? the mirror is {MIRROR}")


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
