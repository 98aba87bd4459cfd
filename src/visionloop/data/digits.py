"""The embedded data set: scikit-learn's real 8×8 digits, written as a class-per-folder source."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def import_digits(raw_dir: Path, image_size: int) -> int:
    """Write scikit-learn's 1,797 real 8×8 digits as PNGs in ``raw_dir/<digit>/<index:04d>.png``.

    Upscaled to ``image_size`` (``data.image_size``); byte-for-byte deterministic (so DVC hashes
    stay put); stale files in ``raw_dir`` are removed.
    """
    raw_dir = Path(raw_dir)
    clear_data_dir(raw_dir)
    digits = load_digits()
    scaled = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for index, (pixels, target) in enumerate(zip(scaled, digits.target, strict=True)):
        folder = raw_dir / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BICUBIC)
        image.save(folder / f"{index:04d}.png", format="PNG")
    return len(scaled)


def clear_data_dir(path: Path) -> None:
    """Empty a data folder, refusing folders that are clearly not one (a project root, home, /).

    Every ``data import`` (digits and the generated sets) starts from an empty ``data.raw_dir``.
    """
    path = path.resolve()
    if path.exists():
        if (
            path == Path(path.anchor)
            or path == Path.home()
            or any((path / marker).exists() for marker in ("params.yaml", ".git", "pyproject.toml"))
        ):
            raise ValueError(
                f"refusing to clear {path}: it looks like a project or home folder, not a data folder"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
