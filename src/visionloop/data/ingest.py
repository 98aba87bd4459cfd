"""The data step: the embedded digits, ingestion with validation and quarantine, and the split.

Every image that enters the loop — a training file or a REST upload — passes the same check,
``canonicalize_image_bytes``: it is decoded only after its declared size is known to be sane, and
then brought to one canonical form (8-bit "L" or 8-bit "RGB"). Files that fail are never dropped
silently: ``ingest`` puts each input file either in ``records`` or in ``quarantined`` with a reason
a person (or an API user) can act on.

Layout written by ``prepare`` (a DVC output)::

    out_dir/images/<label>/<stem>_<sha12>.png   canonical images
    out_dir/manifest.csv                         path,label,split,sha256,source_path[,meta...]
    out_dir/quarantine.csv                       path,label,reason,code,copy (header even when empty)
    out_dir/quarantine/<nnnn>_<name>             copies of the quarantined files
    out_dir/data_report.json                     counts, imbalance, duplicates, reasons, conversions
    out_dir/data_report.png                      counts per class per split
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

if TYPE_CHECKING:
    from visionloop.config import Settings

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "split", "sha256", "source_path")
QUARANTINE_COLUMNS = ("path", "label", "reason", "code", "copy")
# Column names a source manifest may not use for metadata: they are written by ``prepare``.
RESERVED_COLUMNS = frozenset({*MANIFEST_COLUMNS, "abs_path"})

# Reason codes (``InvalidImage.code`` / ``QuarantineEntry.code``): stable, for grouping and APIs.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
UNSUPPORTED = "unsupported_format"
DUPLICATE = "duplicate"
DUPLICATE_CONFLICT = "duplicate_label_conflict"
MISSING_FILE = "missing_file"
NO_LABEL = "no_label"
UNREADABLE = "unreadable"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_PROGRESS_MIN_FILES = 200
# warnings.catch_warnings swaps process-wide filters; serialise our own users of it (the REST
# server validates uploads from several threads).
_WARNINGS_LOCK = threading.Lock()


class InvalidImage(ValueError):
    """An image that cannot enter the loop; ``str(exc)`` is meant for the person who sent it."""

    def __init__(self, reason: str, code: str = CORRUPT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class CanonicalImage:
    """Canonical pixels (uint8, H×W for "L", H×W×3 for "RGB") and what was done to get them."""

    array: np.ndarray
    converted_from: str | None  # original mode (plus "+exif_orientation" when rotated); None if untouched

    @property
    def sha256(self) -> str:
        return pixel_sha256(self.array)


@dataclass
class ImageRecord:
    path: Path  # the source file
    label: str
    sha256: str  # of the canonical pixels and shape (see ``pixel_sha256``)
    width: int
    height: int
    converted_from: str | None
    meta: dict[str, str] = field(default_factory=dict)  # extra columns of a source manifest


@dataclass
class QuarantineEntry:
    path: Path
    label: str | None
    reason: str
    code: str = CORRUPT


@dataclass
class IngestResult:
    records: list[ImageRecord]
    quarantined: list[QuarantineEntry]
    classes: list[str]
    # one {path, label, duplicate_of, duplicate_of_label} per quarantined duplicate
    duplicates: list[dict[str, str]] = field(default_factory=list)
    meta_columns: list[str] = field(default_factory=list)
    root: Path | None = None  # folder that relative source paths are reported against

    @property
    def n_files(self) -> int:
        return len(self.records) + len(self.quarantined)


@dataclass
class PreparedData:
    out_dir: Path
    manifest_path: Path
    quarantine_path: Path
    report_path: Path
    plot_path: Path
    classes: list[str]
    report: dict[str, Any]

    @property
    def n_images(self) -> int:
        return int(self.report["n_images"])

    @property
    def n_quarantined(self) -> int:
        return int(self.report["n_quarantined"])


# --- the embedded data set ---------------------------------------------------------------------


def import_digits(raw_dir: Path, image_size: int = 32) -> int:
    """Write scikit-learn's 1,797 real 8×8 digits as PNGs in ``raw_dir/<digit>/<index:04d>.png``.

    Byte-for-byte deterministic (so DVC hashes stay put); stale files in ``raw_dir`` are removed.
    """
    from sklearn.datasets import load_digits

    raw_dir = Path(raw_dir)
    _clear_dir(raw_dir)
    digits = load_digits()
    scaled = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for index, (pixels, target) in enumerate(zip(scaled, digits.target, strict=True)):
        folder = raw_dir / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BICUBIC)
        image.save(folder / f"{index:04d}.png", format="PNG")
    return len(scaled)


def _clear_dir(path: Path) -> None:
    """Empty a data folder, refusing folders that are clearly not one (a project root, home, /)."""
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


# --- one image: validation and canonical form ---------------------------------------------------


def canonicalize_image_bytes(data: bytes, *, channels: int, min_side: int, max_pixels: int) -> CanonicalImage:
    """Check one encoded image and bring it to canonical form; raise ``InvalidImage`` if it can't be.

    The declared size is checked from the header before any pixel is decoded, so a small file
    declaring a huge image (a decompression bomb) costs nothing.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not data:
        raise InvalidImage("empty file (0 bytes)", EMPTY)
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(
            f"image is too large, refused before decoding (possible decompression bomb): {exc}", TOO_LARGE
        ) from None
    except Image.UnidentifiedImageError:
        raise InvalidImage(
            "not an image, or not an image format that can be read (use PNG, JPEG, BMP, GIF, TIFF or WebP)",
            NOT_AN_IMAGE,
        ) from None
    except Exception as exc:  # any other parser failure on the header
        raise InvalidImage(f"corrupt image header: {exc}", CORRUPT) from None

    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "refused before decoding (possible decompression bomb)",
            TOO_LARGE,
        )
    if min(width, height) < min_side:
        raise InvalidImage(
            f"image is {width}x{height} pixels; each side must be at least {min_side} pixels", TOO_SMALL
        )
    try:
        image.load()
    except Exception as exc:
        raise InvalidImage(f"the image data is corrupt or truncated ({exc})", CORRUPT) from None
    array, converted_from = _to_canonical(image, channels)
    return CanonicalImage(array=array, converted_from=converted_from)


def validate_image_bytes(data: bytes, *, channels: int, min_side: int, max_pixels: int) -> np.ndarray:
    """The canonical uint8 pixels of an encoded image (H×W or H×W×3), or ``InvalidImage(reason)``."""
    return canonicalize_image_bytes(data, channels=channels, min_side=min_side, max_pixels=max_pixels).array


def _to_canonical(image: Image.Image, channels: int) -> tuple[np.ndarray, str | None]:
    """Convert a decoded image to 8-bit "L"/"RGB"; returns the pixels and the conversion done."""
    target = "L" if channels == 1 else "RGB"
    source_mode = image.mode
    notes: list[str] = []
    try:
        if image.getexif().get(0x0112, 1) in range(2, 9):
            image = ImageOps.exif_transpose(image)
            notes.append("exif_orientation")
    except Exception as exc:  # a broken EXIF block is a broken file, not a crash
        raise InvalidImage(f"corrupt EXIF metadata: {exc}", CORRUPT) from None
    try:
        if image.mode == target and "transparency" not in image.info:
            converted = image
        elif image.mode in _SIXTEEN_BIT_MODES:
            # 16-bit samples scale to 8 bits by 255/65535 (a fixed map, not per-image stretching).
            wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
            converted = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert(target)
        elif image.mode in _ALPHA_MODES or "transparency" in image.info:
            if image.mode not in _ALPHA_MODES:
                notes.append("transparency")
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            converted = Image.alpha_composite(white, rgba).convert(target)
        elif image.mode == "F":
            raise InvalidImage(
                "unsupported pixel format 'F' (32-bit float); send 8- or 16-bit grayscale, RGB, RGBA, "
                "palette or CMYK",
                UNSUPPORTED,
            )
        elif image.mode in ("L", "RGB", "1", "P") or target == "RGB":
            converted = image.convert(target)
        else:  # CMYK, YCbCr, LAB, HSV, ... go through RGB on the way to L
            converted = image.convert("RGB").convert(target)
    except InvalidImage:
        raise
    except Exception as exc:
        raise InvalidImage(f"unsupported pixel format {source_mode!r}: {exc}", UNSUPPORTED) from None
    array = np.array(converted, dtype=np.uint8)
    changed = source_mode != target or notes
    return array, "+".join([source_mode, *notes]) if changed else None


def pixel_sha256(array: np.ndarray) -> str:
    """Identity of canonical pixels: sha256 over shape and bytes (equal images ⇔ equal hashes)."""
    header = f"{array.dtype.str}:{'x'.join(map(str, array.shape))}:".encode()
    return hashlib.sha256(header + np.ascontiguousarray(array).tobytes()).hexdigest()


def load_image(path: Path | str) -> np.ndarray:
    """Read a canonical image written by ``prepare``: uint8, H×W for "L", H×W×3 for "RGB"."""
    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            raise InvalidImage(
                f"{path} is not canonical (mode {image.mode!r}; expected 'L' or 'RGB')", UNSUPPORTED
            )
        return np.array(image, dtype=np.uint8)


# --- ingestion ---------------------------------------------------------------------------------


@dataclass
class _Candidate:
    path: Path
    label: str | None
    meta: dict[str, str]
    problem: QuarantineEntry | None = None  # known bad before reading (missing file, no label)


def ingest(
    source: Path,
    *,
    channels: int,
    min_side: int,
    max_pixels: int,
    on_record: Callable[[ImageRecord, np.ndarray], None] | None = None,
) -> IngestResult:
    """Open and check every file of a class-per-folder directory or a ``path,label[,meta...]`` CSV.

    Each file ends up in ``records`` (canonical, first of its pixels) or in ``quarantined`` with a
    reason. ``on_record`` receives each accepted record with its canonical pixels as it is found,
    so callers can write them without holding the whole data set in memory.
    """
    source = Path(source)
    candidates, meta_columns, root = _list_candidates(source)
    records: list[ImageRecord] = []
    quarantined: list[QuarantineEntry] = []
    duplicates: list[dict[str, str]] = []
    first_seen: dict[str, ImageRecord] = {}
    progress = tqdm(
        candidates,
        desc=f"checking {source.name}",
        unit="img",
        file=sys.stderr,
        disable=True if len(candidates) < _PROGRESS_MIN_FILES else None,
    )
    for candidate in progress:
        if candidate.problem is not None:
            quarantined.append(candidate.problem)
            continue
        assert candidate.label is not None
        try:
            canonical = canonicalize_image_bytes(
                candidate.path.read_bytes(), channels=channels, min_side=min_side, max_pixels=max_pixels
            )
        except InvalidImage as exc:
            quarantined.append(QuarantineEntry(candidate.path, candidate.label, exc.reason, exc.code))
            continue
        except Exception as exc:  # unreadable file, or a decoder failure nobody foresaw: quarantine it
            reason = f"cannot read the file: {type(exc).__name__}: {exc}"
            quarantined.append(QuarantineEntry(candidate.path, candidate.label, reason, UNREADABLE))
            continue
        digest = canonical.sha256
        if (first := first_seen.get(digest)) is not None:
            conflict = first.label != candidate.label
            where = _display_path(first.path, root)
            reason = f"exact duplicate of {where} (same pixels)"
            if conflict:
                reason += f"; label conflict: '{candidate.label}' here, '{first.label}' there"
            quarantined.append(
                QuarantineEntry(
                    candidate.path, candidate.label, reason, DUPLICATE_CONFLICT if conflict else DUPLICATE
                )
            )
            duplicates.append(
                {
                    "path": _display_path(candidate.path, root),
                    "label": candidate.label,
                    "duplicate_of": where,
                    "duplicate_of_label": first.label,
                }
            )
            continue
        height, width = canonical.array.shape[:2]
        record = ImageRecord(
            path=candidate.path,
            label=candidate.label,
            sha256=digest,
            width=width,
            height=height,
            converted_from=canonical.converted_from,
            meta=candidate.meta,
        )
        first_seen[digest] = record
        records.append(record)
        if on_record is not None:
            on_record(record, canonical.array)
    classes = sorted({r.label for r in records}, key=class_sort_key)
    return IngestResult(records, quarantined, classes, duplicates, meta_columns, root)


def class_sort_key(label: str) -> tuple[int, int, str]:
    """Order class names naturally: numeric labels by value ("2" before "10"), then the rest."""
    return (0, int(label), label) if label.isascii() and label.isdigit() else (1, 0, label)


def _list_candidates(source: Path) -> tuple[list[_Candidate], list[str], Path]:
    if source.is_dir():
        return _folder_candidates(source), [], source.resolve()
    if source.is_file() and source.suffix.lower() == ".csv":
        candidates, meta_columns = _manifest_candidates(source)
        return candidates, meta_columns, source.resolve().parent
    if not source.exists():
        raise FileNotFoundError(f"data source {source} does not exist")
    raise ValueError(
        f"data source {source} must be a class-per-folder directory or a .csv manifest (path,label)"
    )


def _folder_candidates(root: Path) -> list[_Candidate]:
    """Files under ``root/<class>/`` (recursively); files at the top level have no label."""
    candidates: list[_Candidate] = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            for path in sorted(p for p in entry.rglob("*") if p.is_file()):
                candidates.append(_Candidate(path.resolve(), entry.name, {}))
        elif entry.is_file():
            path = entry.resolve()
            problem = QuarantineEntry(
                path, None, "file is not inside a class folder, so it has no label", NO_LABEL
            )
            candidates.append(_Candidate(path, None, {}, problem))
    return candidates


def _manifest_candidates(manifest: Path) -> tuple[list[_Candidate], list[str]]:
    """Rows of a ``path,label[,meta...]`` CSV; relative paths are relative to the CSV's folder."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ValueError(
            f"{manifest}: missing column(s) {sorted(missing)}; a manifest needs path,label[,meta...]"
        )
    meta_columns = [c for c in table.columns if c not in ("path", "label")]
    clashing = sorted(set(meta_columns) & RESERVED_COLUMNS)
    if clashing:
        raise ValueError(f"{manifest}: column(s) {clashing} are written by prepare; rename them")
    base = manifest.resolve().parent
    candidates: list[_Candidate] = []
    for row_number, row in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
        values = dict(zip(table.columns, row, strict=True))
        raw_path, label = values["path"].strip(), values["label"].strip()
        meta = {c: values[c] for c in meta_columns}
        path = (base / raw_path).resolve() if raw_path else base
        problem = None
        if not raw_path:
            problem = QuarantineEntry(
                Path(manifest),
                label or None,
                f"line {row_number} of {manifest.name} has an empty path",
                MISSING_FILE,
            )
        elif not label:
            problem = QuarantineEntry(path, None, "manifest row has an empty label", NO_LABEL)
        elif not path.is_file():
            problem = QuarantineEntry(path, label, f"file not found: {raw_path}", MISSING_FILE)
        candidates.append(_Candidate(path, label or None, meta, problem))
    return candidates, meta_columns


def _display_path(path: Path, root: Path | None) -> str:
    """A path relative to the source root (stable across machines), as POSIX text."""
    if root is None:
        return Path(path).as_posix()
    return Path(os.path.relpath(Path(path).resolve(), root)).as_posix()


# --- prepare: canonical images, split, manifest, quarantine, report ----------------------------


def prepare(
    source: Path,
    out_dir: Path,
    *,
    channels: int,
    min_side: int,
    max_pixels: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> PreparedData:
    """Ingest ``source`` into ``out_dir``: canonical PNGs, a stratified split, quarantine and a report.

    The split is stratified per class and depends only on the pixels (records are ordered by hash),
    the fractions and the seed, so it is stable across runs and renames.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and their sum < 1; got {val_fraction}, {test_fraction}"
        )
    out_dir = Path(out_dir)
    images_dir, quarantine_dir = out_dir / "images", out_dir / "quarantine"
    for stale in (images_dir, quarantine_dir):
        if stale.exists():
            shutil.rmtree(stale)
    images_dir.mkdir(parents=True)
    quarantine_dir.mkdir(parents=True)

    written: dict[str, str] = {}  # sha256 -> path relative to out_dir

    def write(record: ImageRecord, array: np.ndarray) -> None:
        name = f"{_safe_name(record.path.stem)}_{record.sha256[:12]}.png"
        relative = Path("images") / _safe_name(record.label) / name
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(out_dir / relative, format="PNG")
        written[record.sha256] = relative.as_posix()

    result = ingest(source, channels=channels, min_side=min_side, max_pixels=max_pixels, on_record=write)
    splits, unsplit = stratified_split(result.records, val_fraction, test_fraction, seed)

    manifest_rows = [
        {
            "path": written[r.sha256],
            "label": r.label,
            "split": splits[r.sha256],
            "sha256": r.sha256,
            "source_path": _display_path(r.path, result.root),
            **{c: r.meta.get(c, "") for c in result.meta_columns},
        }
        for r in result.records
    ]
    manifest_rows.sort(key=lambda row: (class_sort_key(row["label"]), row["path"]))
    manifest_path = out_dir / "manifest.csv"
    _write_csv(manifest_path, [*MANIFEST_COLUMNS, *result.meta_columns], manifest_rows)

    quarantine_rows = []
    for index, entry in enumerate(result.quarantined):
        copy = ""
        if entry.code != MISSING_FILE:
            copy_path = quarantine_dir / f"{index:04d}_{_safe_name(Path(entry.path).name)}"
            try:
                shutil.copyfile(entry.path, copy_path)
                copy = copy_path.relative_to(out_dir).as_posix()
            except OSError:  # unreadable: the CSV row still says what and why
                pass
        quarantine_rows.append(
            {
                "path": _display_path(entry.path, result.root),
                "label": entry.label or "",
                "reason": entry.reason,
                "code": entry.code,
                "copy": copy,
            }
        )
    quarantine_path = out_dir / "quarantine.csv"
    _write_csv(quarantine_path, list(QUARANTINE_COLUMNS), quarantine_rows)

    report = build_report(result, splits, unsplit)
    report["params"] = {
        "channels": channels,
        "min_side": min_side,
        "max_pixels": max_pixels,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    report_path = out_dir / "data_report.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot_path = out_dir / "data_report.png"
    plot_split_counts(report, plot_path)
    return PreparedData(
        out_dir, manifest_path, quarantine_path, report_path, plot_path, result.classes, report
    )


def stratified_split(
    records: list[ImageRecord], val_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, str], list[str]]:
    """Assign each record (by sha256) to train/val/test, class by class with ``train_test_split``.

    Every class with at least 3 images gets at least one image in each split whose fraction is > 0;
    smaller classes go to train whole and are returned as the second value.
    """
    from sklearn.model_selection import train_test_split

    by_class: dict[str, list[str]] = {}
    for record in records:
        by_class.setdefault(record.label, []).append(record.sha256)
    splits: dict[str, str] = {}
    unsplit: list[str] = []
    for label in sorted(by_class, key=class_sort_key):
        hashes = sorted(by_class[label])
        n = len(hashes)
        if n < 3:
            splits.update(dict.fromkeys(hashes, "train"))
            unsplit.append(label)
            continue
        n_test = max(1, int(n * test_fraction + 0.5)) if test_fraction > 0 else 0
        n_val = max(1, int(n * val_fraction + 0.5)) if val_fraction > 0 else 0
        while n_test + n_val > n - 1:  # keep at least one training image; shrink the larger part
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        rest, test = train_test_split(hashes, test_size=n_test, random_state=seed) if n_test else (hashes, [])
        train, val = train_test_split(rest, test_size=n_val, random_state=seed) if n_val else (rest, [])
        for name, part in (("train", train), ("val", val), ("test", test)):
            splits.update(dict.fromkeys(part, name))
    return splits, unsplit


def build_report(result: IngestResult, splits: dict[str, str], unsplit: list[str]) -> dict[str, Any]:
    """The numbers a person checks before training: balance, split sizes, what was refused and why."""
    per_class = Counter(r.label for r in result.records)
    per_split: dict[str, dict[str, int]] = {s: dict.fromkeys(result.classes, 0) for s in SPLITS}
    for record in result.records:
        per_split[splits[record.sha256]][record.label] += 1
    conversions = Counter(r.converted_from for r in result.records if r.converted_from)
    counts = [per_class[c] for c in result.classes]
    sizes = Counter(f"{r.width}x{r.height}" for r in result.records)
    return {
        "total_files": result.n_files,
        "n_images": len(result.records),
        "n_quarantined": len(result.quarantined),
        "classes": result.classes,
        "counts_per_class": {c: per_class[c] for c in result.classes},
        "counts_per_split": {s: sum(per_split[s].values()) for s in SPLITS},
        "counts_per_class_per_split": per_split,
        "imbalance_ratio": round(max(counts) / min(counts), 4) if counts else None,
        "classes_too_small_to_split": unsplit,
        "quarantined_by_reason": dict(sorted(Counter(q.code for q in result.quarantined).items())),
        "conversions": dict(sorted(conversions.items())),
        "duplicates": {
            "count": len(result.duplicates),
            "label_conflicts": sum(d["label"] != d["duplicate_of_label"] for d in result.duplicates),
            "items": result.duplicates,
        },
        "image_sizes": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "meta_columns": result.meta_columns,
    }


def plot_split_counts(report: dict[str, Any], path: Path) -> None:
    """A grouped bar chart of images per class and split (people would rather look than read JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = report["classes"]
    per_split = report["counts_per_class_per_split"]
    x = np.arange(len(classes))
    width = 0.8 / len(SPLITS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) + 2), 4))
    for i, split in enumerate(SPLITS):
        ax.bar(x + (i - 1) * width, [per_split[split][c] for c in classes], width, label=split)
    ax.set_xticks(x, classes, rotation=90 if len(classes) > 20 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ratio = report["imbalance_ratio"]
    ax.set_title(
        f"{report['n_images']} images, {report['n_quarantined']} quarantined"
        + (f", imbalance {ratio:.2f}" if ratio is not None else "")
    )
    tallest = max((per_split[s][c] for s in SPLITS for c in classes), default=0)
    ax.set_ylim(0, max(1, tallest) * 1.25)  # room for the legend above the bars
    ax.legend(loc="upper center", ncols=len(SPLITS))
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def read_manifest(out_dir: Path | str) -> pd.DataFrame:
    """The manifest written by ``prepare``, all columns as text, plus an absolute ``abs_path``."""
    out_dir = Path(out_dir).resolve()
    table = pd.read_csv(out_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table["abs_path"] = [str(out_dir / p) for p in table["path"]]
    return table


def source_from_settings(settings: Settings) -> Path:
    """``data.source`` of params.yaml as a path: "digits" means the embedded set in ``data.raw_dir``."""
    data = settings.section("data")
    source = str(data.get("source", "digits"))
    return settings.path(data["raw_dir"] if source == "digits" else source)


def prepare_from_settings(settings: Settings) -> PreparedData:
    """``prepare`` with every argument taken from params.yaml (the CLI, DVC stage and tasks share it)."""
    data = settings.section("data")
    return prepare(
        source_from_settings(settings),
        settings.path(data["prepared_dir"]),
        channels=int(data["channels"]),
        min_side=int(data["min_side"]),
        max_pixels=int(data["max_pixels"]),
        val_fraction=float(data["val_fraction"]),
        test_fraction=float(data["test_fraction"]),
        seed=settings.seed,
    )


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(text: str) -> str:
    """A file-system-safe, non-hidden name for a label or a file stem (the manifest keeps the original)."""
    name = _UNSAFE.sub("_", text).strip("._") or "_"
    return name[:80]
