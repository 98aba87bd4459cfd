"""DVC bookkeeping: record pipeline outputs, version data snapshots, keep data versions, push to the remote."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path

import yaml
from dvc.repo import Repo
from dvc_data.hashfile.build import build
from dvc_data.hashfile.transfer import transfer

from visionloop.config import Settings
from visionloop.contracts import DataVersion


def is_dvc_repo(root: Path) -> bool:
    """Whether the project versions data with DVC (a plain folder still works, hashed without a DVC cache)."""
    return (root / ".dvc").is_dir()


_CWD_LOCK = threading.Lock()


@contextmanager
def _repo(settings: Settings) -> Iterator[Repo]:
    """The project's DVC repo, used from its root: DVC resolves targets against the working directory."""
    with open_repo(settings, settings.root) as repo:
        yield repo


@contextmanager
def open_repo(settings: Settings, root: Path) -> Iterator[Repo]:
    """The DVC repo at ``root`` (the project's, or a scratch one), used from its root under the cwd lock."""
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(settings.state_dir / "dvc-site-cache"))
    with _CWD_LOCK, chdir(root), Repo(str(root)) as repo:
        yield repo


def remote_config(settings: Settings) -> dict[str, str]:
    """The project's DVC remote as DVC config: ``settings.dvc_remote`` (a dir, s3://…) and, for an
    S3-compatible store, ``settings.dvc_endpoint``. Credentials are never written here: DVC's S3 client
    reads them from its own chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``)."""
    remote = {"url": settings.dvc_remote}
    if settings.dvc_endpoint:
        remote["endpointurl"] = settings.dvc_endpoint
    return remote


def configure_remote(settings: Settings) -> str:
    """Point the default remote at the project's (``remote_config``) in .dvc/config.local."""
    with _repo(settings) as repo, repo.config.edit("local") as conf:
        conf.setdefault("remote", {})["visionloop"] = remote_config(settings)
        conf.setdefault("core", {})["remote"] = "visionloop"
    return settings.dvc_remote


def commit_stages(settings: Settings, stages: list[str]) -> None:
    """Record the current outputs of ``stages`` in dvc.lock (the Prefect flow ran them without DVC)."""
    with _repo(settings) as repo:
        for stage in stages:
            repo.commit(stage, force=True)


def push(settings: Settings) -> int:
    """Push cached data to the remote; returns how many files were transferred."""
    configure_remote(settings)
    with _repo(settings) as repo:
        return int(repo.push())


def keep_data_version(settings: Settings, version: DataVersion) -> str | None:
    """Put the images of ``version`` into the project's DVC cache, push them to the remote, and return the
    version's ``.dvc`` file (None outside DVC: nothing can be kept).

    Training calls this so that every data version a model names can be checked out later
    (``visionloop.data.restore``), whether DVC tracks the folder (a snapshot) or not (``data/raw``
    written by a step run outside ``dvc repro``). Raises ``ValueError`` if the files no longer hash to
    ``version`` (changed since it was computed) and ``RuntimeError`` if the push left objects behind.
    """
    if not is_dvc_repo(settings.root):
        return None
    configure_remote(settings)
    with _repo(settings) as repo:
        cache = repo.cache.local
        staging, meta, tree = build(cache, str(settings.path(version.path).resolve()), cache.fs, "md5")
        if tree.hash_info.value != version.dvc_hash:
            raise ValueError(f"{version.path} hashes to {tree.hash_info.value}, not the data version "
                             f"{version.dvc_hash}: it changed since training read it")
        transfer(staging, cache, {tree.hash_info}, shallow=False, hardlink=False)
        # The .dir object and every file it lists: pushing the .dir alone would leave the files behind.
        pushed = repo.cloud.push({tree.hash_info, *(entry for _, _, entry in tree)})
    if pushed.failed:
        raise RuntimeError(f"{len(pushed.failed)} objects of data version {version.dvc_hash} were not pushed "
                           f"to the DVC remote {settings.dvc_remote}")
    return dvc_file(version.dvc_hash, Path(version.path).name, size=meta.size, nfiles=meta.nfiles)


def dvc_file(md5: str, path: str, **meta: int | None) -> str:
    """The text of a ``.dvc`` file naming one folder ``path`` (beside it) at DVC hash ``md5``."""
    out = {"md5": md5, **{key: value for key, value in meta.items() if value is not None}, "hash": "md5",
           "path": path}
    return yaml.safe_dump({"outs": [out]}, sort_keys=False)
