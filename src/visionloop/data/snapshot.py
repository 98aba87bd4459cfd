"""New data versions: the current training data plus labeled production images, or with corrections.

A snapshot is a folder ``data/snapshots/<UTC time>-<reason>/`` holding ``manifest.csv``
(path,label,origin[,meta...]) and its images; its DVC hash (DVC's own hashing, as ``dvc add`` would
record it) is the data version a retrained model records. Nothing is edited in place: each change is a
new snapshot, and the current snapshot is the base of the next one.

No ``.dvc`` file is written into the project (``data/snapshots/`` is git-ignored, like ``data/raw``): the
training that reads a snapshot caches and pushes it to the DVC remote and stores its ``.dvc`` file with
the model version (``dvcrepo.keep_data_version``), so lineage never depends on committing anything, and a
retrain leaves ``git status`` clean. (DVC refuses to write a ``.dvc`` file git ignores.)

Concurrent jobs (a label-correction snapshot beside a retrain's) never lose each other's changes:
    * one snapshot is made at a time, under a file lock in the state directory;
    * a caller that computed its changes from a base (``base=``) gets ``StaleBase`` if another
      snapshot became current meanwhile (compare-and-set), and recomputes from the new one;
    * ``data/snapshots/latest`` names the current snapshot's folder; it is replaced atomically and
      only after the manifest is complete and hashed. A snapshot that failed half-way
      is removed and never becomes current. (A project made before this pointer existed falls back
      to the newest folder.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import DataVersion
from visionloop.data.lineage import dvc_hash, git_commit
from visionloop.data.manifest import read_source_manifest
from visionloop.data.prepare import source_from_settings
from visionloop.locks import exclusive

SNAPSHOT_DIR = "data/snapshots"
LATEST = "latest"  # file in SNAPSHOT_DIR naming the current snapshot's folder
PRODUCTION_ORIGIN = "production"  # the ``origin`` of labeled production images added by a retrain


class StaleBase(RuntimeError):
    """The snapshot was computed from a base that is no longer current: recompute from the current one."""


@dataclass
class Snapshot:
    directory: Path
    manifest: Path
    data_version: DataVersion
    n_base: int
    n_added: int
    n_relabeled: int


def latest_snapshot(settings: Settings) -> Path | None:
    """The current snapshot's manifest, or None when the project has only its original source."""
    root = settings.path(SNAPSHOT_DIR)
    pointer = root / LATEST
    if pointer.is_file():
        manifest = root / pointer.read_text().strip() / "manifest.csv"
        if manifest.is_file():
            return manifest
    manifests = sorted(root.glob("*/manifest.csv")) if root.exists() else []
    return manifests[-1] if manifests else None


def current_source(settings: Settings) -> Path:
    """What training should read now: the current snapshot, else ``data.source``."""
    return latest_snapshot(settings) or source_from_settings(settings)


def source_table(source: Path) -> pd.DataFrame:
    """A source (class-per-folder dir or manifest CSV) as rows of absolute path, label and metadata."""
    if source.suffix.lower() == ".csv":
        table = read_source_manifest(source, ("path", "label"))
        table["path"] = [str(p if Path(p).is_absolute() else (source.parent / p)) for p in table["path"]]
        return table
    rows = [
        {"path": str(f), "label": class_dir.name}
        for class_dir in sorted(p for p in source.iterdir() if p.is_dir())
        for f in sorted(class_dir.rglob("*"))
        if f.is_file()
    ]
    return pd.DataFrame(rows, columns=["path", "label"])


def _replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write ``target`` through a temporary file renamed over it: readers see the old or the new file whole."""
    tmp = target.with_name(f".{target.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def create_snapshot(
    settings: Settings,
    *,
    additions: pd.DataFrame | None = None,
    relabel: dict[str, str] | None = None,
    reason: str = "retrain",
    base: Path | None = None,
) -> Snapshot:
    """Copy the current source + ``additions`` (path,label[,meta]) into a new snapshot, apply ``relabel``
    (source path → new label), version it with DVC and make it current.

    ``base`` is the source the caller computed ``relabel`` from: if it is no longer current, nothing
    is written and ``StaleBase`` is raised. Additions whose ``prediction_id`` the base already holds
    are left out (two retrains collecting the same feedback add it once).
    """
    with exclusive(settings.state_dir / "locks" / "snapshots.lock", wait_s=None, what="data snapshots"):
        current = current_source(settings)
        if base is not None and base.resolve() != current.resolve():
            raise StaleBase(f"snapshot computed from {base}, but the current data is now {current}")
        return _write_snapshot(settings, current, additions, relabel or {}, reason)


def _write_snapshot(
    settings: Settings, base: Path, additions: pd.DataFrame | None, relabel: dict[str, str], reason: str
) -> Snapshot:
    """The snapshot's folder, manifest and DVC version, made current only once all of it exists."""
    table = source_table(base)
    n_base = len(table)
    if "origin" not in table.columns:  # a previous snapshot keeps the origin of each row
        table["origin"] = "base"
    if additions is not None and "prediction_id" in additions.columns and "prediction_id" in table.columns:
        additions = additions[~additions["prediction_id"].isin(set(table["prediction_id"].dropna()))]
    n_added = 0 if additions is None else len(additions)
    if additions is not None and len(additions):
        table = pd.concat([table, additions.assign(origin=PRODUCTION_ORIGIN)], ignore_index=True)
    relabeled = table["path"].isin(relabel.keys())
    table.loc[relabeled, "label"] = table.loc[relabeled, "path"].map(relabel)
    table.loc[relabeled, "origin"] = "correction"

    root = settings.path(SNAPSHOT_DIR)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    directory = root / f"{stamp}-{reason}"
    try:
        (directory / "images").mkdir(parents=True)
        names = []
        for i, source in enumerate(table["path"]):
            name = f"images/{i:06d}{Path(source).suffix.lower() or '.png'}"
            shutil.copyfile(source, directory / name)
            names.append(name)
        table = table.assign(path=names)
        manifest = directory / "manifest.csv"
        _replace_atomically(manifest, lambda tmp: table.to_csv(tmp, index=False))
        version = DataVersion(dvc_hash(directory), str(directory.relative_to(settings.root)),
                              git_commit(settings.root), len(table))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    _replace_atomically(root / LATEST, lambda tmp: tmp.write_text(directory.name + "\n"))
    return Snapshot(directory, manifest, version, n_base, n_added, int(relabeled.sum()))
