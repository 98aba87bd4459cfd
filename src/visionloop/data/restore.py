"""Restoring exactly the images a registered model version trained on: its data version, checked out by DVC.

A model's tags name its data version (DVC's md5 of the folder, ``….dir``), but a hash restores nothing
unless the objects it names are somewhere a later checkout reaches. So training keeps every data version
(``dvcrepo.keep_data_version``): the files go into the project's DVC cache and are pushed to the DVC
remote, and the version's ``.dvc`` file is an artifact of the training run (``contracts.DATA_VERSION_FILE``),
stored with the version wherever MLflow keeps artifacts. ``checkout`` reads it back and has DVC pull it —
from the cache, else the remote — in a scratch DVC repository beside the destination that shares the
project's cache and remote; the folder is renamed into place only once every file checks out.

DVC does not check what it pulls from a remote (a tampered object is checked out as it is), so the
restored folder is hashed again and must give the version's md5; files that differ from the ``.dir``
listing are named. A mismatch drops those objects from the cache and pulls once more (a corrupt cache,
a good remote); a second one (a corrupt remote) fails and leaves nothing at the destination.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dvc.repo import Repo
from dvc_data.hashfile.build import build
from dvc_data.hashfile.db import HashFileDB
from dvc_data.hashfile.hash_info import HashInfo
from dvc_data.hashfile.tree import Tree
from dvc_objects.fs.local import LocalFileSystem

from visionloop.config import Settings
from visionloop.contracts import DATA_VERSION_FILE
from visionloop.data import dvcrepo
from visionloop.models.registry import resolve
from visionloop.models.tracking import run_text

SCRATCH_OUT = "data"  # the folder the scratch repository's .dvc file names


class DataVersionUnavailable(LookupError):
    """The version names no data version this project can restore (no DVC, or no lineage recorded)."""


class DataCorrupted(RuntimeError):
    """The files DVC restored do not hash to the data version, even after fetching them again."""


@dataclass(frozen=True)
class Restored:
    """A data version restored into ``directory``: ``n_files`` files, ``fetched`` objects from the remote."""

    directory: Path
    dvc_hash: str
    n_files: int
    fetched: int


def checkout(settings: Settings, model_uri: str, to: Path) -> Restored:
    """Restore the images the version ``model_uri`` (``models:/NAME/V`` or ``models:/NAME@ALIAS``) trained on
    into ``to`` (absent or empty), md5-checked.

    The ``.dvc`` file stored with the version's run is the record; a version trained before it was kept
    there falls back to its ``data_version`` tag (restorable only if its objects are in the cache or remote).
    """
    version = resolve(settings, model_uri)
    record = run_text(settings, version.run_id, DATA_VERSION_FILE) if version.run_id else None
    tagged = dict(version.tags or {}).get("data_version")
    if record is None and tagged is None:
        raise DataVersionUnavailable(f"{model_uri} (version {version.version}) records no data version")
    out = yaml.safe_load(record)["outs"][0] if record is not None else {"md5": tagged, "hash": "md5"}
    if tagged is not None and out["md5"] != tagged:
        raise DataCorrupted(f"{model_uri}: its {DATA_VERSION_FILE} names {out['md5']}, its data_version tag {tagged}")
    return restore(settings, out, to)


def restore(settings: Settings, out: dict[str, Any], to: Path) -> Restored:
    """Check out the DVC output ``out`` (a ``.dvc`` file's ``outs`` entry: md5 of a folder) into ``to``."""
    if not dvcrepo.is_dvc_repo(settings.root):
        raise DataVersionUnavailable(f"{settings.root} is not a DVC project: no cache or remote to restore from")
    to = to.resolve()
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise FileExistsError(f"{to} exists and is not an empty folder")
    md5 = str(out["md5"])
    to.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{to.name}-checkout-", dir=to.parent))
    try:
        _init_scratch(settings, scratch)
        (scratch / f"{SCRATCH_OUT}.dvc").write_text(dvcrepo.dvc_file(md5, SCRATCH_OUT, size=out.get("size"),
                                                                      nfiles=out.get("nfiles")))
        fetched = _pull(settings, scratch)
        if bad := _mismatches(settings, scratch, md5):
            _evict(settings, scratch, {*bad.values(), md5})  # a corrupt cache: fetch them from the remote again
            shutil.rmtree(scratch / SCRATCH_OUT)
            fetched += _pull(settings, scratch)
            if bad := _mismatches(settings, scratch, md5):
                raise DataCorrupted(f"data version {md5}: {len(bad)} restored files do not match their md5 "
                                    f"in the cache or the remote {settings.dvc_remote}: {', '.join(sorted(bad)[:10])}")
        restored = scratch / SCRATCH_OUT
        n_files = sum(1 for p in restored.rglob("*") if p.is_file())
        if to.exists():
            to.rmdir()
        os.replace(restored, to)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Restored(to, md5, n_files, fetched)


def _init_scratch(settings: Settings, scratch: Path) -> None:
    """A DVC repository (no git) at ``scratch`` using the project's cache and remote: DVC's own pull
    restores a folder anywhere, without touching the project's pipeline or its .dvc files."""
    with dvcrepo.open_repo(settings, settings.root) as project:
        cache_dir = project.cache.local_cache_dir
    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)  # "Initialized DVC repository." is not news for a scratch one
    try:
        Repo.init(str(scratch), no_scm=True).close()
    finally:
        dvc_log.setLevel(level)
    with dvcrepo.open_repo(settings, scratch) as repo, repo.config.edit("local") as conf:
        conf["cache"] = {"dir": cache_dir, "type": "reflink,copy"}  # copies: the restored files own their bytes
        conf["remote"] = {"visionloop": dvcrepo.remote_config(settings)}
        conf["core"] = {"remote": "visionloop"}


def _pull(settings: Settings, scratch: Path) -> int:
    """``dvc pull`` of the scratch repository's .dvc file; returns how many objects came from the remote."""
    with dvcrepo.open_repo(settings, scratch) as repo:
        return int(repo.pull(targets=[f"{SCRATCH_OUT}.dvc"])["stats"]["fetched"])


def _cache(settings: Settings, scratch: Path) -> HashFileDB:
    with dvcrepo.open_repo(settings, scratch) as repo:
        return repo.cache.local


def _mismatches(settings: Settings, scratch: Path, md5: str) -> dict[str, str]:
    """Restored files (relative path → the md5 they should have) that break the data version ``md5``;
    the listing itself (``<md5>`` → md5) when the files match it but it is not the version's."""
    # Hashed afresh: DVC's state database already holds the md5 checkout *expected* for each file it wrote.
    fs = LocalFileSystem()
    _, _, actual = build(HashFileDB(fs, str(scratch / ".rehash")), str(scratch / SCRATCH_OUT), fs, "md5", dry_run=True)
    if actual.hash_info.value == md5:
        return {}
    cache = _cache(settings, scratch)
    expected = {"/".join(key): entry.value for key, _, entry in Tree.load(cache, HashInfo("md5", md5))}
    found = {"/".join(key): entry.value for key, _, entry in actual}
    bad = {path: value for path, value in expected.items() if found.get(path) != value}
    bad.update({path: value for path, value in found.items() if path not in expected})
    return bad or {md5: md5}


def _evict(settings: Settings, scratch: Path, objects: set[str]) -> None:
    """Drop ``objects`` (md5s of files or listings) from the shared cache, so that the next pull fetches them."""
    cache = _cache(settings, scratch)
    for value in objects:
        path = cache.oid_to_path(value)
        if cache.fs.exists(path):
            cache.fs.remove(path)
