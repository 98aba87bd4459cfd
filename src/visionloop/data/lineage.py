"""Where a model came from: git commit, DVC data version, params hash."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dvc_data.hashfile.build import build
from dvc_data.hashfile.db import HashFileDB
from dvc_objects.fs.local import LocalFileSystem

from visionloop.contracts import DataVersion


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def git_commit(root: Path) -> str:
    """HEAD of the project's git repository ("unknown" outside git)."""
    try:
        return _git(root, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def git_dirty(root: Path) -> bool:
    """Whether tracked files differ from HEAD (dvc.lock, written by the pipeline itself, aside)."""
    try:
        changed = _git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return False
    return any(not line.endswith("dvc.lock") for line in changed)


def dvc_hash(path: Path) -> str:
    """The md5 DVC records for ``path`` (``….dir`` for a folder), computed by DVC's own hashing."""
    fs = LocalFileSystem()
    # dry_run: hash only; the object database is a throwaway needed by the API, nothing is written.
    odb = HashFileDB(fs, str(path.parent / ".dvc-hash-scratch"))
    _, _, obj = build(odb, str(path.resolve()), fs, "md5", dry_run=True)
    return obj.hash_info.value


def data_version(root: Path, path: Path) -> DataVersion:
    """The data version of the images under ``path`` (a folder or a manifest's folder)."""
    target = path if path.is_dir() else path.parent
    files = sum(1 for p in target.rglob("*") if p.is_file())
    try:
        relative = str(target.resolve().relative_to(root.resolve()))
    except ValueError:
        relative = str(target.resolve())
    return DataVersion(dvc_hash=dvc_hash(target), path=relative, git_commit=git_commit(root), n_images=files)
