"""Image files for tests: encoded bytes, and small class-per-folder sources."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png(image: np.ndarray) -> bytes:
    """``image`` encoded as a PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tiny_source(root: Path) -> dict[str, list[Path]]:
    """Three classes (a, b, c) of eight distinct random 16×16 images in a class-per-folder source."""
    rng = np.random.default_rng(0)
    files: dict[str, list[Path]] = {}
    for label in ("a", "b", "c"):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(8):
            path = folder / f"{label}{i}.png"
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
            files.setdefault(label, []).append(path)
    return files
