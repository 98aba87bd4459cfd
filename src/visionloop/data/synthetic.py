"""What the generated data sets (``shapes``, ``contours``) share: backgrounds, colours, rendering, writing.

Generated sets exist so that the loop can be shown and measured on RGB photos-like data without a
download: class folders of JPEGs of mixed sizes on varied backgrounds, plus a ``manifest.csv``
(``path,label`` and one column per generation condition) whose condition columns are the slices
that reveal what a model learned from (``evaluate --slices``, the gate's ``slices.metadata``).
Every image comes from its own ``numpy`` generator seeded with ``(seed, index)``, so a set is
byte-for-byte the same on every run (DVC hashes stay put) and any prefix of it is stable.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from visionloop.data.manifest import write_csv

SUPERSAMPLE = 4  # shapes are drawn this many times larger, then downsampled: anti-aliased edges
BACKGROUNDS = ("plain", "gradient", "noise", "stripes")


@dataclass(frozen=True)
class Sample:
    """One generated image with its class and the conditions it was drawn under (manifest columns)."""

    image: Image.Image
    label: str
    conditions: dict[str, str]
    quality: int  # JPEG quality it is saved at


Generator = Callable[[np.random.Generator], Sample]


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def luminance(colour: np.ndarray) -> float:
    return float(colour @ np.array([0.299, 0.587, 0.114]))


def contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_gap: float = 70.0) -> np.ndarray:
    """A random colour whose luminance differs from ``against`` by at least ``min_gap`` (a visible object)."""
    for _ in range(50):
        colour = random_colour(rng)
        if abs(luminance(colour) - luminance(against)) >= min_gap:
            return colour
    return np.full(3, 0.0 if luminance(against) > 127 else 255.0)


def background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size``×``size``×3 float background: ``plain``, ``gradient``, ``noise`` (blotchy + grain) or ``stripes``."""
    base = random_colour(rng)
    canvas = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        canvas = canvas * (1 - t[..., None]) + random_colour(rng) * t[..., None]
    elif kind == "noise":
        coarse = rng.normal(0, 40, (6, 6, 3)).astype(np.float32)
        blotches = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC), dtype=np.float32) - 128
        canvas = canvas + blotches + rng.normal(0, rng.uniform(15, 35), (size, size, 3))
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.3)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        canvas = canvas * (1 - wave[..., None]) + random_colour(rng) * wave[..., None]
    elif kind != "plain":
        raise ValueError(f"unknown background {kind!r}; one of {BACKGROUNDS}")
    return canvas


def compose(canvas: np.ndarray, mask: Image.Image, colour: np.ndarray) -> Image.Image:
    """Paint ``colour`` onto the background through a supersampled ``mask`` (downsampled: soft edges)."""
    size = canvas.shape[0]
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)[..., None] / 255.0
    pixels = canvas * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def finish(image: Image.Image, blur_radius: float, grain: float, rng: np.random.Generator) -> Image.Image:
    """Camera-like degradation: optional Gaussian blur, then sensor grain of standard deviation ``grain``."""
    if blur_radius > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    if grain > 0:
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, grain, (image.height, image.width, 3))
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    return image


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_generated(out_dir: Path, generate: Generator, count: int, seed: int) -> int:
    """Write ``count`` samples as ``out_dir/<label>/<index:05d>.jpg`` and ``out_dir/manifest.csv``.

    ``out_dir`` must be empty or absent (callers clear it); returns the number written. The manifest
    lists ``path,label`` then the condition columns, so it can be given to ``data.source`` or
    ``visionloop init --images`` to keep the conditions as slices.
    """
    out_dir = Path(out_dir)
    rows: list[dict[str, str]] = []
    for index in range(count):
        sample = generate(np.random.default_rng([seed, index]))
        relative = Path(sample.label) / f"{index:05d}.jpg"
        (out_dir / relative.parent).mkdir(parents=True, exist_ok=True)
        (out_dir / relative).write_bytes(jpeg_bytes(sample.image, sample.quality))
        rows.append({"path": relative.as_posix(), "label": sample.label, **sample.conditions})
    columns = list(rows[0]) if rows else ["path", "label"]
    write_csv(out_dir / "manifest.csv", columns, rows)
    return count
