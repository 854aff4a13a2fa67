"""Building the aarch64 userland natively (edgekit/arm/rootfs.py), the parts that need no root:
unpacking a real .deb with the host's dpkg-deb, the venv's layout, the wheel platform tags.
The whole build and the emulated runs are in test_arm_emulated.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.arm import rootfs
from edgekit.errors import EdgekitError


def _deb(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    src = tmp_path / f"src-{name}"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    (src / "DEBIAN").mkdir()
    (src / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: arm64\n"
                                        "Maintainer: edgekit tests <tests@example.invalid>\nDescription: test\n")
    out = tmp_path / f"{name}_1.0_arm64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(src), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (apt-get install dpkg)")
def test_included_packages_unpack_through_the_merged_usr_links(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")          # as debootstrap's first stage leaves merged /usr
    archives = root / "var/cache/apt/archives"
    archives.mkdir(parents=True)
    debs = {"libfoo": _deb(tmp_path, "libfoo", {"lib/aarch64-linux-gnu/libfoo.so.1": "foo"}),
            "python3": _deb(tmp_path, "python3", {"usr/bin/python3.11": "#!", "usr/lib/python3.11/os.py": "x = 1"})}
    for d in debs.values():
        shutil.copy(d, archives / d.name)
    (root / "debootstrap").mkdir()
    (root / "debootstrap/base").write_text("libfoo python3")
    (root / "debootstrap/debpaths").write_text("".join(f"{n} /var/cache/apt/archives/{d.name}\n" for n, d in debs.items()))

    assert rootfs.unpack_included(root, tmp_path / "log") == 2
    assert (root / "lib").is_symlink(), "tar replaced the merged-/usr link with a folder"
    assert (root / "usr/lib/aarch64-linux-gnu/libfoo.so.1").read_text() == "foo"
    assert (root / "usr/lib/python3.11/os.py").read_text() == "x = 1"
    assert rootfs.python_version(root) == "3.11"
    assert not (root / "debootstrap").exists() and not list(archives.glob("*.deb"))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (apt-get install dpkg)")
def test_a_bad_package_names_itself_and_the_log(tmp_path):
    root = tmp_path / "root"
    (root / "debootstrap").mkdir(parents=True)
    (root / "var/cache/apt/archives").mkdir(parents=True)
    (root / "var/cache/apt/archives/broken_1_arm64.deb").write_bytes(b"not an ar archive")
    (root / "debootstrap/base").write_text("broken")
    (root / "debootstrap/debpaths").write_text("broken /var/cache/apt/archives/broken_1_arm64.deb\n")
    with pytest.raises(EdgekitError) as err:
        rootfs.unpack_included(root, tmp_path / "setup.log")
    assert "broken_1_arm64.deb" in err.value.message and "setup.log" in err.value.hint


def test_wheel_tags_cover_every_glibc_up_to_the_userlands(tmp_path):
    lib = tmp_path / "usr/lib/aarch64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libc.so.6").write_bytes(b"\x7fELF...GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.\n")
    tags = rootfs.platform_tags(tmp_path, "aarch64")
    assert tags[0] == "manylinux_2_36_aarch64" and tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert len(tags) == 36 - 17 + 2


def test_the_venv_layout_is_what_python_reads(tmp_path):
    site = rootfs.make_venv(tmp_path, "/opt/edgekit/venv", "3.11")
    base = tmp_path / "opt/edgekit/venv"
    assert site == base / "lib/python3.11/site-packages" and site.is_dir()
    assert (base / "bin/python").readlink() == Path("/usr/bin/python3")
    cfg = dict(line.split(" = ") for line in (base / "pyvenv.cfg").read_text().splitlines())
    assert cfg == {"home": "/usr/bin", "include-system-site-packages": "false", "version": "3.11"}
