"""Manifests: the CSV files that say which image has which label, split and metadata.

A *source* manifest (``path,label[,meta...]``) is an input: of the data step, of ``data validate``,
of a batch job (where ``label`` is optional). The *prepared* manifest is what ``prepare`` writes
(``MANIFEST_COLUMNS`` then the source's metadata columns), which training, evaluation and the
bundle's test set read. This module is the one owner of which columns are structural and which are
metadata (``metadata_columns``): the slices of the gate and of ``evaluate --slices``, and the
columns a batch output carries.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "split", "sha256", "source_path")
QUARANTINE_COLUMNS = ("path", "label", "reason", "code", "copy")
# Written by ``prepare`` (and ``abs_path`` by ``read_manifest``): never metadata.
_STRUCTURAL = frozenset({*MANIFEST_COLUMNS, "abs_path"})


def metadata_columns(columns: Iterable[Any]) -> list[str]:
    """The metadata columns among a manifest's columns, in their order: every column but the structural ones."""
    return [str(c) for c in columns if str(c) not in _STRUCTURAL]


def read_source_manifest(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A source manifest as text, header names stripped; refused when a ``required`` column is missing."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; a manifest here needs a header with {', '.join(required)} "
            "(other columns are metadata)"
        )
    return table


def read_manifest(out_dir: Path | str) -> pd.DataFrame:
    """The manifest written by ``prepare``, all columns as text, plus an absolute ``abs_path``."""
    out_dir = Path(out_dir).resolve()
    table = pd.read_csv(out_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table["abs_path"] = [str(out_dir / p) for p in table["path"]]
    return table


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """A manifest-style CSV with a header, even when there are no rows (so readers always find the columns)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
