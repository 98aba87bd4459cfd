"""Ingestion: every file of a source, checked, deduplicated, and either accepted or quarantined.

A source is a class-per-folder directory or a ``path,label[,meta...]`` manifest. Each file passes
``data.images.canonicalize_image_bytes``; files that fail are never dropped silently: ``ingest``
puts each one either in ``records`` or in ``quarantined`` with a reason a person can act on. Two
files with the same canonical pixels are one image: the first is kept, the next are quarantined as
duplicates (with a label conflict noted when their labels differ). A file that resolves outside
the source's folder (``../`` or an absolute path in a manifest, a symlink leading out) is quarantined
as ``outside_root`` without being read, so a manifest cannot pull other files into the data.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from visionloop.data.images import (
    CORRUPT,
    DUPLICATE,
    DUPLICATE_CONFLICT,
    MISSING_FILE,
    NO_LABEL,
    OUTSIDE_ROOT,
    UNREADABLE,
    InvalidImage,
    canonicalize_image_bytes,
)
from visionloop.data.manifest import metadata_columns, read_source_manifest

_PROGRESS_MIN_FILES = 200


@dataclass
class ImageRecord:
    path: Path  # the source file
    label: str
    sha256: str  # of the canonical pixels and shape (see ``pixel_sha256``)
    width: int
    height: int
    converted_from: str | None
    meta: dict[str, str] = field(default_factory=dict)  # metadata columns of a source manifest


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
    result = IngestResult([], [], [], meta_columns=meta_columns, root=root)
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
            result.quarantined.append(candidate.problem)
            continue
        assert candidate.label is not None
        try:
            canonical = canonicalize_image_bytes(
                candidate.path.read_bytes(), channels=channels, min_side=min_side, max_pixels=max_pixels
            )
        except InvalidImage as exc:
            result.quarantined.append(QuarantineEntry(candidate.path, candidate.label, exc.reason, exc.code))
            continue
        except Exception as exc:  # unreadable file, or a decoder failure nobody foresaw: quarantine it
            reason = f"cannot read the file: {type(exc).__name__}: {exc}"
            result.quarantined.append(QuarantineEntry(candidate.path, candidate.label, reason, UNREADABLE))
            continue
        if (first := first_seen.get(canonical.sha256)) is not None:
            _quarantine_duplicate(result, candidate, first)
            continue
        height, width = canonical.array.shape[:2]
        record = ImageRecord(
            path=candidate.path,
            label=candidate.label,
            sha256=canonical.sha256,
            width=width,
            height=height,
            converted_from=canonical.converted_from,
            meta=candidate.meta,
        )
        first_seen[record.sha256] = record
        result.records.append(record)
        if on_record is not None:
            on_record(record, canonical.array)
    result.classes = sorted({r.label for r in result.records}, key=class_sort_key)
    return result


def _quarantine_duplicate(result: IngestResult, candidate: _Candidate, first: ImageRecord) -> None:
    """Quarantine a file whose pixels ``first`` already has, and note it (with any label conflict)."""
    assert candidate.label is not None
    conflict = first.label != candidate.label
    where = display_path(first.path, result.root)
    reason = f"exact duplicate of {where} (same pixels)"
    if conflict:
        reason += f"; label conflict: '{candidate.label}' here, '{first.label}' there"
    code = DUPLICATE_CONFLICT if conflict else DUPLICATE
    result.quarantined.append(QuarantineEntry(candidate.path, candidate.label, reason, code))
    result.duplicates.append(
        {
            "path": display_path(candidate.path, result.root),
            "label": candidate.label,
            "duplicate_of": where,
            "duplicate_of_label": first.label,
        }
    )


def class_sort_key(label: str) -> tuple[int, int, str]:
    """Order class names naturally: numeric labels by value ("2" before "10"), then the rest."""
    return (0, int(label), label) if label.isascii() and label.isdigit() else (1, 0, label)


def display_path(path: Path, root: Path | None) -> str:
    """A path relative to the source root (stable across machines), as POSIX text."""
    if root is None:
        return Path(path).as_posix()
    return Path(os.path.relpath(Path(path).resolve(), root)).as_posix()


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


def _outside(path: Path, base: Path, label: str | None) -> QuarantineEntry | None:
    """The quarantine entry of a resolved ``path`` that is not under ``base``; None when it is."""
    if path.is_relative_to(base):
        return None
    return QuarantineEntry(path, label, "the file lies outside the source's folder; it was not read or copied",
                           OUTSIDE_ROOT)


def _folder_candidates(root: Path) -> list[_Candidate]:
    """Files under ``root/<class>/`` (recursively); files at the top level have no label."""
    candidates: list[_Candidate] = []
    base = root.resolve()
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            for path in sorted(p for p in entry.rglob("*") if p.is_file()):
                resolved = path.resolve()
                candidates.append(_Candidate(resolved, entry.name, {}, _outside(resolved, base, entry.name)))
        elif entry.is_file():
            path = entry.resolve()
            problem = QuarantineEntry(
                path, None, "file is not inside a class folder, so it has no label", NO_LABEL
            )
            candidates.append(_Candidate(path, None, {}, problem))
    return candidates


def _manifest_candidates(manifest: Path) -> tuple[list[_Candidate], list[str]]:
    """Rows of a ``path,label[,meta...]`` CSV; relative paths are relative to the CSV's folder."""
    table = read_source_manifest(manifest, ("path", "label"))
    meta_columns = metadata_columns(table.columns)
    clashing = sorted(set(table.columns) - {"path", "label", *meta_columns})
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
        elif (outside := _outside(path, base, label or None)) is not None:
            problem = outside
        elif not label:
            problem = QuarantineEntry(path, None, "manifest row has an empty label", NO_LABEL)
        elif not path.is_file():
            problem = QuarantineEntry(path, label, f"file not found: {raw_path}", MISSING_FILE)
        candidates.append(_Candidate(path, label or None, meta, problem))
    return candidates, meta_columns
