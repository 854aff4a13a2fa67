"""Feeds of real images: folders of photos, the bundled set, deterministic crops and
a calibration / held-out split in which no image is on both sides.

A feed is ``{input_name: float32 array (N, C, H, W)}``; :class:`ImageFeeds` is
re-iterable, so the same object serves calibration, parity and benchmarks.
"""
from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from edgekit.errors import CalibrationError
from edgekit.images import (  # noqa: F401  (re-exported: the feeds' public API)
    IMAGE_SUFFIXES, PHOTOS_DIR, Sample, _bucket, bundled_photos, load_image, split_images)
from edgekit.specs import InputSpec, Preprocess

def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder not found: {folder}")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise CalibrationError(f"no images in {folder}",
                               hint=f"expected files ending in {', '.join(IMAGE_SUFFIXES)} (searched recursively)")
    return found


def crops(paths: Sequence[Path], per_image: int, seed: int = 0) -> list[Sample]:
    """The whole image plus ``per_image - 1`` seeded random crops (scale 0.15–1, aspect 3/4–4/3)."""
    out = []
    for p in paths:
        rng = random.Random(f"{seed}:{p.name}")
        out.append(Sample(p))
        for _ in range(per_image - 1):
            area = rng.uniform(0.15, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = min(1.0, float(np.sqrt(area * aspect)))
            h = min(1.0, float(np.sqrt(area / aspect)))
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            out.append(Sample(p, (x, y, x + w, y + h), rng.random() < 0.5))
    return out


class ImageFeeds:
    """Re-iterable feeds from image samples, batched to the input's batch size.

    Unreadable images are skipped with a warning and counted in ``skipped``.
    """

    def __init__(self, samples: Sequence[Sample], pre: Preprocess, input: InputSpec, source: str = ""):
        self.samples = list(samples)
        self.pre = pre
        self.input = input
        self.source = source
        self.skipped: list[str] = []
        self._cache: list[np.ndarray] | None = None

    @property
    def batch(self) -> int:
        return self.input.shape[0]

    def _arrays(self) -> list[np.ndarray]:
        if self._cache is None:
            arrays = []
            size = (self.input.shape[2], self.input.shape[3])
            for s in self.samples:
                try:
                    arrays.append(load_image(s, self.pre, size))
                except Exception as exc:  # PIL raises many types for corrupt files
                    if str(s.path) not in self.skipped:
                        self.skipped.append(str(s.path))
                        warnings.warn(f"skipping unreadable image {s.path.name}: {type(exc).__name__}: {exc}",
                                      stacklevel=2)
            if not arrays:
                raise CalibrationError(f"none of the {len(self.samples)} images could be read ({self.source})")
            self._cache = arrays
        return self._cache

    def __len__(self) -> int:
        return max(1, len(self._arrays()) // self.batch)

    @property
    def count(self) -> int:
        """Number of images (rows) the feeds yield."""
        return len(self) * self.batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        arrays, b = self._arrays(), self.batch
        for i in range(len(self)):
            chunk = arrays[i * b:(i + 1) * b]
            while len(chunk) < b:  # fewer images than one batch: repeat
                chunk = chunk + arrays[: b - len(chunk)]
            yield {self.input.name: np.stack(chunk).astype(np.float32)}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.path.name}:{s.box}:{s.flip}".encode())
            h.update(hashlib.sha256(s.path.read_bytes()).digest() if s.path.exists() else b"-")
        h.update(repr((self.pre, self.input.shape)).encode())
        return h.hexdigest()


@dataclass
class FeedSet:
    """Calibration and held-out feeds drawn from the same images, never sharing one."""

    calib: ImageFeeds
    heldout: ImageFeeds
    bundled: bool


def photo_feeds(pre: Preprocess, input: InputSpec, folder: Path | None = None, heldout: int = 200,
                calib: int = 256, seed: int = 0) -> FeedSet:
    """Split ``folder`` (or the bundled photos) into calibration and held-out images and
    expand each side with seeded crops to about ``calib`` / ``heldout`` samples."""
    bundled = folder is None
    paths = bundled_photos() if bundled else find_images(Path(folder))
    cal_paths, held_paths = split_images(paths)
    if not held_paths:
        raise CalibrationError(f"need at least 2 images to hold one out for parity, found {len(paths)}")
    per_held = max(1, -(-heldout // len(held_paths)))
    per_cal = max(1, -(-calib // len(cal_paths)))
    src = "bundled photos" if bundled else str(folder)
    return FeedSet(
        calib=ImageFeeds(crops(cal_paths, per_cal, seed)[:max(calib, len(cal_paths))], pre, input,
                         f"{src}: {len(cal_paths)} calibration images"),
        heldout=ImageFeeds(crops(held_paths, per_held, seed + 1)[:max(heldout, len(held_paths))], pre, input,
                           f"{src}: {len(held_paths)} held-out images"),
        bundled=bundled)


def take(feeds: Iterable[dict[str, np.ndarray]], n: int) -> list[dict[str, np.ndarray]]:
    """``n`` feeds spread evenly over ``feeds`` (all of them if there are fewer).

    Feeds made by :func:`photo_feeds` come grouped by photo (every crop of one photo,
    then the next), so the first ``n`` would all show the same picture."""
    feeds = feeds if hasattr(feeds, "__len__") else list(feeds)
    total = len(feeds)
    if total <= n:
        return list(feeds)
    picks = set(np.linspace(0, total - 1, n).round().astype(int).tolist())
    return [f for i, f in enumerate(feeds) if i in picks]
