"""DVC bookkeeping: record pipeline outputs, version data snapshots, push to the remote."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path

from dvc.repo import Repo

from visionloop.config import Settings


def is_dvc_repo(root: Path) -> bool:
    """Whether the project versions data with DVC (a plain folder still works, hashed without a DVC cache)."""
    return (root / ".dvc").is_dir()


_CWD_LOCK = threading.Lock()


@contextmanager
def _repo(settings: Settings) -> Iterator[Repo]:
    """The project's DVC repo, used from its root: DVC resolves targets against the working directory."""
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(settings.state_dir / "dvc-site-cache"))
    with _CWD_LOCK, chdir(settings.root), Repo(str(settings.root)) as repo:
        yield repo


def configure_remote(settings: Settings) -> str:
    """Point the default remote at ``settings.dvc_remote`` (a dir, s3://…) in .dvc/config.local."""
    url = settings.dvc_remote
    with _repo(settings) as repo, repo.config.edit("local") as conf:
        conf.setdefault("remote", {})["visionloop"] = {"url": url}
        conf.setdefault("core", {})["remote"] = "visionloop"
    return url


def commit_stages(settings: Settings, stages: list[str]) -> None:
    """Record the current outputs of ``stages`` in dvc.lock (the Prefect flow ran them without DVC)."""
    with _repo(settings) as repo:
        for stage in stages:
            repo.commit(stage, force=True)


def add(settings: Settings, path: Path) -> str:
    """``dvc add`` a data snapshot; returns its md5 (the data version)."""
    with _repo(settings) as repo:
        stages = repo.add(str(path))
    return stages[0].outs[0].hash_info.value


def push(settings: Settings) -> int:
    """Push cached data to the remote; returns how many files were transferred."""
    configure_remote(settings)
    with _repo(settings) as repo:
        return int(repo.push())
