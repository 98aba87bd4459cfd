"""The generated ``shapes`` set: circles, squares, triangles and stars as RGB JPEGs of mixed sizes.

A stand-in for "a few hundred photos in class folders": 48–128 px images, the shape at a random
scale, position, rotation and colour on a plain, gradient, blotchy-noise or striped background,
with grain, a little blur and a random JPEG quality. The manifest's ``background``, ``size`` and
``quality`` columns say how each image was made.
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

SHAPES = ("circle", "square", "triangle", "star")
SIDE_RANGE = (48, 128)


def _polygon(center: np.ndarray, radius: float, n: int, rotation: float, inner: float | None = None) -> list:
    """Vertices of a regular ``n``-gon (or an ``n``-pointed star when ``inner`` gives the inner radius ratio)."""
    points = []
    steps = 2 * n if inner else n
    for k in range(steps):
        r = radius * (inner if inner and k % 2 else 1.0)
        angle = rotation + 2 * np.pi * k / steps
        points.append((float(center[0] + r * np.cos(angle)), float(center[1] + r * np.sin(angle))))
    return points


def shape_mask(shape: str, side: int, rng: np.random.Generator) -> Image.Image:
    """A supersampled 8-bit mask of one filled shape, at a random scale, place and rotation."""
    big = side * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    radius = rng.uniform(0.2, 0.42) * big
    center = rng.uniform(radius + 2, big - radius - 2, 2)
    rotation = rng.uniform(0, 2 * np.pi)
    if shape == "circle":
        draw.ellipse([*(center - radius), *(center + radius)], fill=255)
    elif shape == "square":
        draw.polygon(_polygon(center, radius, 4, rotation), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(center, radius, 3, rotation), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(center, radius, 5, rotation, inner=rng.uniform(0.38, 0.5)), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
    return mask


def generate_shape(rng: np.random.Generator) -> Sample:
    """One random shape image with its label and conditions."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = background(kind, side, rng)
    colour = contrasting_colour(rng, canvas.mean(axis=(0, 1)))
    image = compose(canvas, shape_mask(shape, side, rng), colour)
    image = finish(image, blur_radius=float(rng.choice([0.0, 0.6])), grain=float(rng.uniform(0, 10)), rng=rng)
    quality = int(rng.integers(60, 96))
    size_bin = "small" if side < 75 else "medium" if side < 102 else "large"
    return Sample(image, shape, {"background": kind, "size": size_bin,
                                 "quality": "low" if quality < 78 else "high"}, quality)


def write_shapes(out_dir: Path, count: int, seed: int) -> int:
    """Write ``count`` shape images and their manifest under ``out_dir`` (see ``synthetic.write_generated``)."""
    return write_generated(out_dir, generate_shape, count, seed)
