"""Prepare: a source ingested into the training data set, split and reported (the ``prepare`` DVC stage).

Layout written by ``prepare`` (a DVC output)::

    out_dir/images/<label>/<stem>_<sha12>.png   canonical images
    out_dir/manifest.csv                         path,label,split,sha256,source_path[,meta...]
    out_dir/quarantine.csv                       path,label,reason,code,copy (header even when empty)
    out_dir/quarantine/<nnnn>_<name>             copies of the quarantined files
    out_dir/data_report.json                     counts, imbalance, duplicates, reasons, conversions
    out_dir/data_report.png                      counts per class per split
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from visionloop.config import Settings
from visionloop.data.images import MISSING_FILE, OUTSIDE_ROOT
from visionloop.data.ingest import ImageRecord, IngestResult, class_sort_key, display_path, ingest
from visionloop.data.manifest import MANIFEST_COLUMNS, QUARANTINE_COLUMNS, write_csv
from visionloop.data.report import build_report, plot_split_counts

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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


def source_from_settings(settings: Settings) -> Path:
    """``data.source`` of params.yaml as a path: "digits" means the embedded set in ``data.raw_dir``."""
    data = settings.params.data
    return settings.path(data.raw_dir if data.source == "digits" else data.source)


def prepare_from_settings(settings: Settings, source: Path | None = None, out_dir: Path | None = None) -> PreparedData:
    """``prepare`` with every limit and fraction from params.yaml (the CLI, DVC stage, tasks and retraining).

    ``source`` and ``out_dir`` default to ``data.source`` and ``data.prepared_dir``.
    """
    data = settings.params.data
    return prepare(
        source or source_from_settings(settings),
        out_dir or settings.path(data.prepared_dir),
        channels=data.channels,
        min_side=data.min_side,
        max_pixels=data.max_pixels,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=settings.seed,
    )


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
            "source_path": display_path(r.path, result.root),
            **{c: r.meta.get(c, "") for c in result.meta_columns},
        }
        for r in result.records
    ]
    manifest_rows.sort(key=lambda row: (class_sort_key(row["label"]), row["path"]))
    manifest_path = out_dir / "manifest.csv"
    write_csv(manifest_path, [*MANIFEST_COLUMNS, *result.meta_columns], manifest_rows)
    quarantine_path = out_dir / "quarantine.csv"
    write_csv(quarantine_path, QUARANTINE_COLUMNS, _quarantine(result, out_dir, quarantine_dir))

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


def _quarantine(result: IngestResult, out_dir: Path, quarantine_dir: Path) -> list[dict[str, str]]:
    """Copy each quarantined file (when it can be read) beside the data; its row says what, why and where."""
    rows = []
    for index, entry in enumerate(result.quarantined):
        copy = ""
        if entry.code not in (MISSING_FILE, OUTSIDE_ROOT):  # outside the source: not ours to copy
            copy_path = quarantine_dir / f"{index:04d}_{_safe_name(Path(entry.path).name)}"
            try:
                shutil.copyfile(entry.path, copy_path)
                copy = copy_path.relative_to(out_dir).as_posix()
            except OSError:  # unreadable: the CSV row still says what and why
                pass
        rows.append(
            {
                "path": display_path(entry.path, result.root),
                "label": entry.label or "",
                "reason": entry.reason,
                "code": entry.code,
                "copy": copy,
            }
        )
    return rows


def stratified_split(
    records: list[ImageRecord], val_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, str], list[str]]:
    """Assign each record (by sha256) to train/val/test, class by class with ``train_test_split``.

    Every class with at least 3 images gets at least one image in each split whose fraction is > 0;
    smaller classes go to train whole and are returned as the second value.
    """
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


def _safe_name(text: str) -> str:
    """A file-system-safe, non-hidden name for a label or a file stem (the manifest keeps the original)."""
    name = _UNSAFE.sub("_", text).strip("._") or "_"
    return name[:80]
