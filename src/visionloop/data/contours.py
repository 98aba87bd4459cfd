"""The generated ``contours`` set: is the outline ``closed`` or ``open``? (the seed's first pitfall).

Each image is one outline — an ellipse, a polygon or a smooth blob — drawn as a stroke on a varied
background; an ``open`` one has a stretch of its outline missing. What varies, and is written as a
manifest column so that a model's accuracy can be read per condition (and training can be
restricted to some conditions to test the others): ``background`` (plain, gradient, noise, stripes),
``stroke`` (thin 1–2 px, thick 3–5 px), ``gap`` (none for closed, small or large for open),
``blur`` (none, soft), ``quality`` (JPEG: high, low), ``figure`` (ellipse, polygon, blob) and
``size`` (small, medium, large; 48–96 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from visionloop.data.synthetic import (
    BACKGROUNDS,
    SUPERSAMPLE,
    Sample,
    background,
    compose,
    contrasting_colour,
    finish,
    write_generated,
)

LABELS = ("closed", "open")
FIGURES = ("ellipse", "polygon", "blob")
SIDE_RANGE = (48, 96)
POINTS = 720  # samples along an outline


def outline(figure: str, center: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """``POINTS`` points (x, y) evenly spread along a closed outline, starting at a random place."""
    theta = np.linspace(0, 2 * np.pi, POINTS, endpoint=False) + rng.uniform(0, 2 * np.pi)
    if figure == "ellipse":
        ratio = rng.uniform(0.55, 1.0)
        rx, ry = radius, radius * ratio
        tilt = rng.uniform(0, np.pi)
        x, y = rx * np.cos(theta), ry * np.sin(theta)
        x, y = x * np.cos(tilt) - y * np.sin(tilt), x * np.sin(tilt) + y * np.cos(tilt)
        points = np.stack([x, y], axis=1)
    elif figure == "blob":
        wobble = 1 + sum(rng.uniform(0.04, 0.14) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        points = np.stack([np.cos(theta), np.sin(theta)], axis=1) * (radius * wobble / 1.3)[:, None]
    elif figure == "polygon":
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n) * 0.25 + np.arange(n) * 2 * np.pi / n)
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius * rng.uniform(0.8, 1.0, (n, 1))
        points = _along(np.vstack([corners, corners[:1]]), POINTS)
    else:
        raise ValueError(f"unknown figure {figure!r}; one of {FIGURES}")
    return points + center


def _along(path: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced by arc length along the polyline ``path`` (last point excluded)."""
    lengths = np.linalg.norm(np.diff(path, axis=0), axis=1)
    positions = np.concatenate([[0], np.cumsum(lengths)])
    targets = np.linspace(0, positions[-1], n, endpoint=False)
    return np.stack([np.interp(targets, positions, path[:, i]) for i in range(2)], axis=1)


def contour_mask(points: np.ndarray, size: int, width: float, gap_px: float) -> Image.Image:
    """A ``size``² mask of the outline stroked at ``width``; a ``gap_px`` stretch of it removed when > 0."""
    closed = np.vstack([points, points[:1]])
    perimeter = float(np.linalg.norm(np.diff(closed, axis=0), axis=1).sum())
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if gap_px > 0:
        keep = int(round(len(points) * (1 - min(gap_px / perimeter, 0.5))))
        stroke = [tuple(p) for p in points[:keep]]
    else:
        stroke = [tuple(p) for p in closed]
    draw.line(stroke, fill=255, width=max(1, int(round(width))), joint="curve")
    return mask


def generate_contour(rng: np.random.Generator) -> Sample:
    """One random outline image, closed or open, with its conditions."""
    label = LABELS[int(rng.integers(2))]
    side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    figure = FIGURES[int(rng.integers(len(FIGURES)))]
    thick = bool(rng.integers(2))
    width = rng.uniform(3.0, 5.0) if thick else rng.uniform(1.0, 2.0)
    big = side * SUPERSAMPLE
    radius = rng.uniform(0.25, 0.4) * big
    center = rng.uniform(radius + width * SUPERSAMPLE, big - radius - width * SUPERSAMPLE, 2)
    points = outline(figure, center, radius, rng)
    points = np.clip(points, 0, big - 1)
    gap_kind = "none"
    gap_px = 0.0
    if label == "open":
        gap_kind = "small" if rng.integers(2) else "large"
        perimeter = float(np.linalg.norm(np.diff(np.vstack([points, points[:1]]), axis=0), axis=1).sum())
        fraction = rng.uniform(0.03, 0.07) if gap_kind == "small" else rng.uniform(0.12, 0.25)
        # at least 3 output pixels plus the stroke width: a gap a round cap or the blur cannot close
        gap_px = max(fraction * perimeter, (3 + width) * SUPERSAMPLE)
    mask = contour_mask(points, big, width * SUPERSAMPLE, gap_px)
    canvas = background(kind, side, rng)
    image = compose(canvas, mask, contrasting_colour(rng, canvas.mean(axis=(0, 1)), min_gap=90.0))
    soft = bool(rng.integers(2))
    image = finish(image, blur_radius=rng.uniform(0.6, 1.0) if soft else 0.0, grain=float(rng.uniform(0, 8)),
                   rng=rng)
    quality = int(rng.integers(40, 96))
    conditions = {
        "background": kind,
        "stroke": "thick" if thick else "thin",
        "gap": gap_kind,
        "blur": "soft" if soft else "none",
        "quality": "low" if quality < 70 else "high",
        "figure": figure,
        "size": "small" if side < 64 else "medium" if side < 80 else "large",
    }
    return Sample(image, label, conditions, quality)


def write_contours(out_dir: Path, count: int, seed: int) -> int:
    """Write ``count`` contour images and their manifest under ``out_dir`` (see ``synthetic.write_generated``)."""
    return write_generated(out_dir, generate_contour, count, seed)
