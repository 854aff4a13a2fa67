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


# Pillow modes holding more than 8 bits per sample: 16-bit PNG/TIFF greyscale opens as I;16*
# (or I), 32-bit integer and float images as I and F. Pillow's convert("L"/"RGB") clips
# these at 255 (a 16-bit photo turns ~all white), so they are rescaled to 0-255 first.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
MIN_SIDE = 2  # pixels: below this an image carries no picture to calibrate on


def to_8bit(im):
    """A wide-range greyscale image (16-bit, 32-bit, float) as 8-bit ``L``, scaled by its bit
    depth (16-bit: /257; 32-bit integer: by the 16-bit range when it fits, else its own max;
    float: 0-1 taken as the full range); other modes unchanged."""
    from PIL import Image

    if im.mode not in WIDE_MODES:
        return im
    a = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif im.mode == "F":
        scale = 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 255.0 / max(float(np.nanmax(a)), 1e-12)
    else:  # "I": 16-bit PNGs open as I in newer Pillow; wider data is scaled by its own peak
        peak = float(a.max()) if a.size else 0.0
        scale = 255.0 / (65535.0 if peak <= 65535 else peak)
    a = np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(a, "L")


def inspect_image(path: Path) -> str | None:
    """Read only the header: ``None`` for an ordinary 8-bit image, ``"converted: 16-bit"`` for a
    wide one that :func:`to_8bit` rescales, ``"skipped: <why>"`` for one that cannot be used."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
    except Exception as exc:  # noqa: BLE001 - PIL raises many types (and DecompressionBombError)
        text = str(exc).strip().replace(str(path), path.name)
        text = text.splitlines()[0][:120] if text else ""
        return f"skipped: {type(exc).__name__}" + (f" ({text})" if text else "")
    if min(w, h) < MIN_SIDE:
        return f"skipped: {w}x{h} pixels"
    if w * h > (Image.MAX_IMAGE_PIXELS or float("inf")):
        return f"skipped: {w}x{h} pixels is over Pillow's {Image.MAX_IMAGE_PIXELS} pixel limit"
    if mode in WIDE_MODES:
        return "converted: " + ("16-bit" if mode.startswith("I;16") or mode == "I" else
                                "32-bit float" if mode == "F" else mode)
    return None


def load_image(sample: Sample | Path, pre: Preprocess, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode, crop, resize (short side), centre-crop and normalise → float32 (C, H, W)."""
    from PIL import Image

    sample = sample if isinstance(sample, Sample) else Sample(Path(sample))
    with Image.open(sample.path) as im:
        im = to_8bit(im).convert("L" if pre.channels == 1 else "RGB")
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
