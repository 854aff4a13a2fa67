"""Gather photos from outside the project into a folder, for INT8 checks on photos no export saw.

    python bench/external_photos.py DIR

bench/int8_common.py's ``external_photos()`` reads four photos from installed packages. Four photos
give 100 correlated crops, so one crop is one point of top-1: too few to tell a network that misses
its bar from one that does not. This script adds four images that ship inside wheels on PyPI
(downloaded with ``pip download --no-deps``; nothing is committed, nothing installed):

* imgaug 0.4.0: ``quokka.jpg`` (an animal on pavement);
* mahotas 1.4.19: ``demos/data/luispedro.jpg`` (a portrait), ``demos/data/DepartmentStore.jpg``
  (a drawn crowd scene: an illustration, not a photo);
* scipy 1.9.3: ``misc/face.dat``, the raccoon photo: bz2-compressed raw RGB, 768×1024, decoded here
  with NumPy (no pickle) and written as PNG.

``DIR/old4`` gets the four of ``external_photos()``, ``DIR/new4`` the four above. Point the bench
scripts at one set with ``H19_EXTERNAL=DIR/new4``, or score export folders on both with
bench/int8_unseen.py.
"""
from __future__ import annotations

import argparse
import bz2
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (requirement, member in the wheel, file name written)
WHEEL_IMAGES = [
    ("imgaug==0.4.0", "imgaug/quokka.jpg", "quokka.jpg"),
    ("mahotas==1.4.19", "mahotas/demos/data/luispedro.jpg", "luispedro.jpg"),
    ("mahotas==1.4.19", "mahotas/demos/data/DepartmentStore.jpg", "DepartmentStore.jpg"),
    ("scipy==1.9.3", "scipy/misc/face.dat", "raccoon_face.png"),
]


def fetch(requirement: str, into: Path) -> Path:
    """The wheel of ``requirement`` for this platform and Python, downloaded into ``into``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--disable-pip-version-check", "-d", str(into), requirement], check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    return next(p for p in into.glob("*.whl") if p.name.lower().startswith(name + "-"))


def write_image(data: bytes, dest: Path) -> None:
    if dest.suffix == ".png" and data[:3] == b"BZh":   # scipy's face.dat
        from PIL import Image

        rgb = np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3)
        Image.fromarray(rgb).save(dest)
    else:
        dest.write_bytes(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    from bench.int8_common import external_photos

    old, new = args.dir / "old4", args.dir / "new4"
    old.mkdir(parents=True, exist_ok=True)
    new.mkdir(parents=True, exist_ok=True)
    for p in external_photos():
        shutil.copyfile(p, old / p.name)
    with tempfile.TemporaryDirectory(prefix="edgekit-photo-wheels-") as tmp:
        wheels: dict[str, Path] = {}
        for req, member, name in WHEEL_IMAGES:
            if req not in wheels:
                wheels[req] = fetch(req, Path(tmp))
            with zipfile.ZipFile(wheels[req]) as z:
                write_image(z.read(member), new / name)
    for d in (old, new):
        print(f"{d}: {', '.join(sorted(p.name for p in d.iterdir()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
