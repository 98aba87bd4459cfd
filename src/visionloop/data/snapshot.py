"""New data versions: the current training data plus labeled production images, or with corrections.

A snapshot is a folder ``data/snapshots/<UTC time>-<reason>/`` holding ``manifest.csv``
(path,label,origin[,meta...]) and its images; it is ``dvc add``-ed, so its DVC hash is the data
version a retrained model records. Nothing is edited in place: each change is a new snapshot, and
the newest snapshot is the base of the next one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import DataVersion
from visionloop.data import dvcrepo
from visionloop.data.lineage import data_version, git_commit
from visionloop.data.manifest import read_source_manifest
from visionloop.data.prepare import source_from_settings

SNAPSHOT_DIR = "data/snapshots"


@dataclass
class Snapshot:
    directory: Path
    manifest: Path
    data_version: DataVersion
    n_base: int
    n_added: int
    n_relabeled: int


def latest_snapshot(settings: Settings) -> Path | None:
    """The newest snapshot's manifest, or None when the project has only its original source."""
    root = settings.path(SNAPSHOT_DIR)
    manifests = sorted(root.glob("*/manifest.csv")) if root.exists() else []
    return manifests[-1] if manifests else None


def current_source(settings: Settings) -> Path:
    """What training should read now: the newest snapshot, else ``data.source``."""
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


def create_snapshot(
    settings: Settings,
    *,
    additions: pd.DataFrame | None = None,
    relabel: dict[str, str] | None = None,
    reason: str = "retrain",
    base: Path | None = None,
) -> Snapshot:
    """Copy ``base`` + ``additions`` (path,label[,meta]) into a new snapshot, apply ``relabel``
    (source path → new label), and version it with DVC."""
    base = base or current_source(settings)
    table = source_table(base)
    n_base = len(table)
    if "origin" not in table.columns:  # a previous snapshot keeps the origin of each row
        table["origin"] = "base"
    n_added = 0 if additions is None else len(additions)
    if additions is not None and len(additions):
        table = pd.concat([table, additions.assign(origin="production")], ignore_index=True)
    relabel = relabel or {}
    relabeled = table["path"].isin(relabel.keys())
    table.loc[relabeled, "label"] = table.loc[relabeled, "path"].map(relabel)
    table.loc[relabeled, "origin"] = "correction"

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    directory = settings.path(SNAPSHOT_DIR) / f"{stamp}-{reason}"
    (directory / "images").mkdir(parents=True)
    names = []
    for i, source in enumerate(table["path"]):
        name = f"images/{i:06d}{Path(source).suffix.lower() or '.png'}"
        shutil.copyfile(source, directory / name)
        names.append(name)
    table = table.assign(path=names)
    manifest = directory / "manifest.csv"
    table.to_csv(manifest, index=False)

    if dvcrepo.is_dvc_repo(settings.root):
        dvc_hash = dvcrepo.add(settings, directory)
        version = DataVersion(dvc_hash, str(directory.relative_to(settings.root)), git_commit(settings.root),
                              len(table))
    else:
        version = data_version(settings.root, directory)
    return Snapshot(directory, manifest, version, n_base, n_added, int(relabeled.sum()))
