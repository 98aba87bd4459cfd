"""What a folder of images (or a ``path,label[,meta...]`` manifest) holds, read once before ``init`` decides.

``visionloop init`` chooses channels, input size and augmentations from this survey, and its report
shows the survey beside each choice. Only what those choices need is measured: per image its
mode, size and whether its colour channels differ; per channel the mean and spread of the pixels
(from small thumbnails: a survey of a few thousand photos takes seconds). Files Pillow cannot open
are counted, not judged: ``data prepare`` quarantines them with a reason, as for any source.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from visionloop.data.manifest import metadata_columns, read_source_manifest

THUMBNAIL = 32  # side of the thumbnail each image's colour statistics come from
GRAY_TOLERANCE = 8  # an RGB image whose channels differ by at most this (0-255) everywhere is gray
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})


@dataclass(frozen=True)
class SourceImage:
    """One file of the source: where it is, its class, and its manifest metadata (empty for folders)."""

    path: Path
    label: str
    meta: dict[str, str] = field(default_factory=dict)
    within_class: str = ""  # a folder source's path below its class folder (kept when copied)


@dataclass
class Survey:
    """The measurements ``init`` chooses from (see ``visionloop.project.choices``)."""

    images: list[SourceImage]
    class_counts: dict[str, int]
    modes: dict[str, int]
    n_gray: int  # images whose pixels are gray, whatever their mode
    widths: list[int]
    heights: list[int]
    mean: list[float]  # per RGB channel, 0-1
    std: list[float]
    unreadable: list[Path]
    meta_columns: list[str]
    meta_values: dict[str, int]  # distinct values per metadata column

    @property
    def n_readable(self) -> int:
        return len(self.widths)

    @property
    def short_sides(self) -> np.ndarray:
        return np.minimum(self.widths, self.heights)

    @property
    def aspect_ratios(self) -> np.ndarray:
        return np.asarray(self.widths, dtype=float) / np.asarray(self.heights, dtype=float)


def list_source(source: Path) -> tuple[list[SourceImage], list[str]]:
    """The files of a class-per-folder directory or of a CSV manifest (paths relative to the CSV), with labels.

    Files at a folder's top level (no class) and manifest rows without a path or label are left out;
    ``init`` copies only what it can label. Returns the images and the manifest's metadata columns.
    """
    source = Path(source)
    if source.is_dir():
        images = [
            SourceImage(path, folder.name, within_class=path.relative_to(folder).as_posix())
            for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        ]
        return images, []
    if source.is_file() and source.suffix.lower() == ".csv":
        table = read_source_manifest(source, ("path", "label"))
        columns = metadata_columns(table.columns)
        images = [
            SourceImage((source.parent / row["path"].strip()).resolve(), row["label"].strip(),
                        {c: row[c] for c in columns})
            for row in table.to_dict("records")
            if row["path"].strip() and row["label"].strip()
        ]
        return images, columns
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    raise ValueError(f"{source} must be a class-per-folder directory or a .csv manifest (path,label[,meta...])")


def survey(source: Path) -> Survey:
    """Open every listed image once (thumbnails only) and measure what ``init`` decides from."""
    images, columns = list_source(source)
    modes: Counter[str] = Counter()
    widths, heights, unreadable = [], [], []
    n_gray = 0
    sums, squares, pixels = np.zeros(3), np.zeros(3), 0
    for item in images:
        try:
            with Image.open(item.path) as image:
                mode, (width, height) = image.mode, image.size
                image.draft("RGB", (THUMBNAIL * 2, THUMBNAIL * 2))  # JPEGs decode at a fraction of their size
                thumb = np.asarray(image.convert("RGB").resize((THUMBNAIL, THUMBNAIL)), dtype=np.float64) / 255.0
        except Exception:  # noqa: BLE001 - any file Pillow cannot read is counted; prepare says why
            unreadable.append(item.path)
            continue
        modes[mode] += 1
        widths.append(width)
        heights.append(height)
        spread = np.abs(thumb - thumb.mean(axis=2, keepdims=True)).max()
        n_gray += mode in GRAY_MODES or spread * 255 <= GRAY_TOLERANCE
        flat = thumb.reshape(-1, 3)
        sums += flat.sum(axis=0)
        squares += (flat**2).sum(axis=0)
        pixels += len(flat)
    mean = sums / max(pixels, 1)
    std = np.sqrt(np.maximum(squares / max(pixels, 1) - mean**2, 1e-6))
    meta_values = {c: len({i.meta[c] for i in images}) for c in columns}
    return Survey(
        images=images,
        class_counts=dict(sorted(Counter(i.label for i in images).items())),
        modes=dict(modes.most_common()),
        n_gray=n_gray,
        widths=widths,
        heights=heights,
        mean=[round(float(v), 4) for v in mean],
        std=[round(float(v), 4) for v in std],
        unreadable=unreadable,
        meta_columns=columns,
        meta_values=meta_values,
    )
