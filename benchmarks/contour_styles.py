"""A second open/closed contour generator, drawn unlike ``visionloop.data.contours``: the "unseen styles" test.

Why: a model that scores well on held-out *conditions* of the project's generator may still have learnt
that generator's hand (its anti-aliased supersampled strokes, its three figure families, its gap
rule). This one shares nothing with it but the task: no supersampling (aliased pixels), no shared
background or colour code, and other drawing primitives:

* ``arc``: ``ImageDraw.arc`` / ``ImageDraw.ellipse(outline=...)`` — a closed one is the full ellipse,
  an open one an arc missing 25–90°;
* ``scribble``: a hand-drawn polyline through jittered points around a circle, its stroke drawn as
  separate segments (square ends, no joints), open ones stopping two or three segments short of the start;
* ``rectangle``: ``ImageDraw.rounded_rectangle(outline=...)`` closed, or three-and-a-bit sides of it open;

Backgrounds are paper-like (off-white with faint ruled lines, or a checkerboard of two close tones) and
the ink is dark or saturated; sizes 56–112 px, saved as PNG-exact RGB arrays (no JPEG step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

STYLES = ("arc", "scribble", "rectangle")
PAPERS = ("ruled", "checker")
LABELS = ("closed", "open")


def _paper(kind: str, side: int, rng: np.random.Generator) -> Image.Image:
    tone = rng.uniform(200, 250, 3)
    pixels = np.broadcast_to(tone, (side, side, 3)).copy()
    if kind == "ruled":
        step = int(rng.integers(7, 13))
        pixels[::step] -= rng.uniform(25, 50)
    else:
        cell = int(rng.integers(6, 14))
        yy, xx = np.mgrid[0:side, 0:side]
        pixels[((yy // cell + xx // cell) % 2).astype(bool)] -= rng.uniform(15, 35)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    colour = rng.uniform(0, 120, 3)
    colour[int(rng.integers(3))] = rng.uniform(0, 200)  # dark, sometimes one channel stronger (blue/red ink)
    return tuple(int(c) for c in colour)


def draw_contour(label: str, style: str, paper: str, rng: np.random.Generator) -> Image.Image:
    """One image of a ``closed`` or ``open`` outline in ``style`` on ``paper``."""
    side = int(rng.integers(56, 113))
    image = _paper(paper, side, rng)
    draw = ImageDraw.Draw(image)
    ink, width = _ink(rng), int(rng.integers(1, 5))
    radius = rng.uniform(0.22, 0.38) * side
    cx, cy = rng.uniform(radius + width + 2, side - radius - width - 2, 2)
    box = [cx - radius, cy - radius * rng.uniform(0.6, 1.0), cx + radius, cy + radius * rng.uniform(0.6, 1.0)]
    if style == "arc":
        if label == "closed":
            draw.ellipse(box, outline=ink, width=width)
        else:
            start = rng.uniform(0, 360)
            draw.arc(box, start, start + 360 - rng.uniform(25, 90), fill=ink, width=width)
    elif style == "rectangle":
        if label == "closed":
            draw.rounded_rectangle(box, radius=int(rng.integers(0, 8)), outline=ink, width=width)
        else:
            x0, y0, x1, y1 = box
            corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
            first = int(rng.integers(4))
            path = [corners[(first + k) % 4] for k in range(4)]
            end = rng.uniform(0.1, 0.6)  # the fourth side drawn only this far: a visible gap
            last, back = np.array(path[3]), np.array(path[0])
            path.append(tuple(last + end * (back - last)))
            draw.line(path, fill=ink, width=width)
    elif style == "scribble":
        n = int(rng.integers(9, 16))
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
        r = radius * rng.uniform(0.8, 1.1, n)
        points = [(float(cx + a * np.cos(t)), float(cy + a * np.sin(t))) for a, t in zip(r, angles, strict=True)]
        if label == "closed":
            points.append(points[0])
        else:
            points = points[: n - int(rng.integers(2, 4))]  # stops two or three segments short of the start
        for a, b in zip(points, points[1:], strict=False):  # segment by segment: square ends, no joints
            draw.line([a, b], fill=ink, width=width)
    else:
        raise ValueError(f"unknown style {style!r}; one of {STYLES}")
    return image


def write_styled_contours(out_dir: Path, count: int, seed: int) -> Path:
    """``count`` images as ``out_dir/<label>/<index>.png`` and ``out_dir/manifest.csv`` (path,label,style,paper)."""
    rows = []
    for index in range(count):
        rng = np.random.default_rng([seed, index, 7])
        label, style = LABELS[index % 2], STYLES[(index // 2) % len(STYLES)]
        paper = PAPERS[int(rng.integers(len(PAPERS)))]
        relative = Path(label) / f"{index:05d}.png"
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        draw_contour(label, style, paper, rng).save(out_dir / relative)
        rows.append(f"{relative.as_posix()},{label},{style},{paper}")
    manifest = out_dir / "manifest.csv"
    manifest.write_text("path,label,style,paper\n" + "\n".join(rows) + "\n")
    return manifest
