"""Real photos: the bundled set, decoding with a model's preprocessing, and the
deterministic split into calibration and held-out images (no image on both sides).

Used by the zoo (BatchNorm statistics of deterministic weights come from the
calibration side of the bundled photos) and by the ``calibration`` package's feeds.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .specs import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PHOTOS_DIR = Path(__file__).parent / "data" / "photos"


def bundled_photos() -> list[Path]:
    """The real photos that ship with edgekit (see photos/SOURCES.md)."""
    return sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _bucket(path: Path) -> float:
    return int(hashlib.sha1(path.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_images(paths: Sequence[Path], heldout_fraction: float = 0.4) -> tuple[list[Path], list[Path]]:
    """Deterministic split by file name hash: (calibration, held-out); never overlapping,
    both non-empty when there are at least two images."""
    ranked = sorted(paths, key=lambda p: (_bucket(p), p.name))
    n_held = min(len(ranked) - 1, max(1, round(len(ranked) * heldout_fraction))) if len(ranked) > 1 else 0
    held = sorted(ranked[:n_held])
    calib = sorted(ranked[n_held:])
    return calib, held


@dataclass(frozen=True)
class Sample:
    """One image, optionally a crop of it (box in relative coordinates) and mirrored."""

    path: Path
    box: tuple[float, float, float, float] | None = None
    flip: bool = False


def load_image(sample: Sample | Path, pre: Preprocess, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode, crop, resize (short side), centre-crop and normalise → float32 (C, H, W)."""
    from PIL import Image

    sample = sample if isinstance(sample, Sample) else Sample(Path(sample))
    with Image.open(sample.path) as im:
        im = im.convert("L" if pre.channels == 1 else "RGB")
        if sample.box is not None:
            w, h = im.size
            x0, y0, x1, y1 = sample.box
            im = im.crop((round(x0 * w), round(y0 * h), max(round(x1 * w), round(x0 * w) + 1),
                          max(round(y1 * h), round(y0 * h) + 1)))
        if sample.flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        ch, cw = size or (pre.crop, pre.crop)
        short = round(min(ch, cw) * pre.resize / pre.crop)
        w, h = im.size
        scale = short / min(w, h)
        resample = Image.Resampling.BICUBIC if pre.interpolation == "bicubic" else Image.Resampling.BILINEAR
        im = im.resize((max(cw, round(w * scale)), max(ch, round(h * scale))), resample)
        w, h = im.size
        left, top = (w - cw) // 2, (h - ch) // 2
        im = im.crop((left, top, left + cw, top + ch))
        a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    a = (a - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))
