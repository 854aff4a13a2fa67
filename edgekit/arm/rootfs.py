"""Build the aarch64 userland natively: no package installation runs under emulation.

``debootstrap --foreign`` resolves, downloads and unpacks Debian's required packages on the host;
it leaves the packages that ``--include`` adds (Python and its libraries) as .debs for a second
stage, which would unpack and configure every package again *inside* the userland, under qemu.
That second stage was most of the set-up's cost: 272 s of 350 s wall and most of 327 s of CPU on
a 2-core EPYC (2026-12-07), CPU that CI's test run competes for. edgekit runs nothing in the
userland that needs a configured system (Python, NumPy and a runtime's wheel, edgekit/arm/job.py),
so instead:

* the included .debs are unpacked on the host too (``dpkg-deb --fsys-tarfile | tar``, keeping
  the merged-/usr directory symlinks that debootstrap created);
* the venv is laid out by hand (``pyvenv.cfg``, ``bin/python`` → ``/usr/bin/python3``) and filled by
  the **host's** pip with ``--target`` and the userland's platform tags (aarch64, its glibc, its
  Python), so the host's pip configuration (index, proxy, certificates) applies;
* the standard library and the venv are byte-compiled by the host's Python where its version is
  the userland's (same bytecode), else by the userland's Python under emulation.

Measured on the same host: about 40 s and 30 s of CPU for the whole set-up.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import EdgekitError
from . import chroot as ch

MIRROR = "http://deb.debian.org/debian"
INCLUDE = "python3"
OLDEST_GLIBC_TAG = 17   # manylinux2014 = manylinux_2_17, the oldest tag aarch64 wheels use


def debootstrap_foreign(root: Path, release: str, debian_arch: str, debs: Path, logfile: Path) -> None:
    """First stage only: required packages unpacked, the included ones downloaded (host-native)."""
    host_cmd(["debootstrap", "--foreign", f"--arch={debian_arch}", "--variant=minbase", f"--include={INCLUDE}",
              f"--cache-dir={debs}", release, str(root), MIRROR], logfile,
             hint=f"a proxy or mirror problem? the mirror is {MIRROR}")


def unpack_included(root: Path, logfile: Path) -> int:
    """Unpack the packages debootstrap left for its second stage; returns how many. Then drop the
    second stage's files (debootstrap/ and the copied .debs: the cache folder keeps them)."""
    meta = root / "debootstrap"
    paths = dict(line.split(" ", 1) for line in (meta / "debpaths").read_text().splitlines() if " " in line)
    names = (meta / "base").read_text().split() if (meta / "base").is_file() else []
    for name in names:
        deb = root / paths[name].strip().lstrip("/")
        _unpack(deb, root, logfile)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    shutil.rmtree(meta)
    return len(names)


def _unpack(deb: Path, root: Path, logfile: Path) -> None:
    with open(logfile, "ab") as log:
        log.write(f"$ dpkg-deb --fsys-tarfile {deb.name} | tar -x\n".encode())
        log.flush()
        data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=log)
        tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)], stdin=data.stdout,
                             stdout=log, stderr=subprocess.STDOUT)
        data.stdout.close()
        if data.wait() != 0 or tar.returncode != 0:
            raise EdgekitError(f"cannot unpack {deb.name} into the userland (dpkg-deb {data.returncode}, "
                               f"tar {tar.returncode})", hint=f"see {logfile}")


def python_version(root: Path) -> str | None:
    """The userland's Python as 'X.Y' (from /usr/bin/python3.Y), or None."""
    for p in sorted((root / "usr/bin").glob("python3.*")):
        if p.name[len("python3."):].isdigit():
            return p.name[len("python"):]
    return None


def glibc_version(root: Path) -> tuple[int, int]:
    """The userland's glibc (major, minor), read from the library's own version banner."""
    for lib in sorted(root.glob("usr/lib/*-linux-gnu/libc.so.6")):
        m = re.search(rb"release version (\d+)\.(\d+)", lib.read_bytes())
        if m:
            return int(m.group(1)), int(m.group(2))
    raise EdgekitError(f"no glibc found in {root}", hint="rerun 'edgekit arm setup' after removing the folder")


def platform_tags(root: Path, arch: str) -> list[str]:
    """pip's ``--platform`` values for wheels this userland can load: every manylinux tag up to its
    glibc (pip does not expand a ``manylinux_2_X`` tag to the older ones it implies)."""
    major, minor = glibc_version(root)
    return [f"manylinux_{major}_{m}_{arch}" for m in range(minor, OLDEST_GLIBC_TAG - 1, -1)] + \
        [f"manylinux2014_{arch}"]


def make_venv(root: Path, venv: str, python: str) -> Path:
    """A venv's layout without running Python: the interpreter link and ``pyvenv.cfg`` (Python reads
    it beside ``bin/``'s parent and takes the venv's site-packages). Returns site-packages."""
    base = root / venv.lstrip("/")
    (base / "bin").mkdir(parents=True)
    (base / "bin/python").symlink_to("/usr/bin/python3")
    (base / "bin/python3").symlink_to("python")
    (base / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {python}\n")
    site = base / "lib" / f"python{python}" / "site-packages"
    site.mkdir(parents=True)
    return site


def host_pip_install(site: Path, pins: dict[str, str], tags: list[str], python: str, logfile: Path) -> None:
    """The pinned wheels for the userland's platform and Python, installed by the host's pip."""
    abi = "cp" + python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
            "--only-binary=:all:", "--no-compile", "--target", str(site), "--implementation", "cp",
            "--python-version", python, "--abi", abi, *[a for t in tags for a in ("--platform", t)],
            *[f"{k}=={v}" for k, v in sorted(pins.items())]]
    host_cmd(argv, logfile, hint="the host's pip fetches aarch64 wheels from its index: is it reachable, and "
                                 "does it carry these versions for aarch64?")


def byte_compile(root: Path, dirs: list[str], python: str, logfile: Path, as_dirs: list[str] | None = None) -> str:
    """Byte-compile ``dirs`` (userland paths); ``as_dirs``: the paths the files will have when they
    run there (a venv built beside the live one). Returns who compiled."""
    as_dirs = as_dirs or dirs
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == python:
        for d, final in zip(dirs, as_dirs):
            host_cmd([sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", str(root / d.lstrip("/")),
                      "-p", final, str(root / d.lstrip("/"))], logfile, ok=(0, 1))
        return "the host's Python"
    ch.run(root, ["/usr/bin/python3", "-m", "compileall", "-q", "-j", "0", *dirs], log=logfile)
    return "the userland's Python (emulated)"


def host_cmd(argv: list[str], logfile: Path, *, hint: str = "", ok: tuple[int, ...] = (0,)) -> None:
    """Run a host command, its output appended to ``logfile``; an exit outside ``ok`` raises."""
    with open(logfile, "ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode not in ok:
        raise EdgekitError(f"{Path(argv[0]).name} exited with {proc.returncode}: {ch._tail(logfile)[:300]}",
                           hint=f"see {logfile}" + (f"; {hint}" if hint else ""))
