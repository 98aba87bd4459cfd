"""Throwaway visionloop projects with the real DVC, MLflow and Prefect (local mode) stack.

Training a project takes about a minute on two cores, so the suite trains one per session
(``train_project`` behind the ``trained_project`` fixture) and each test or module that needs a
champion works on its own ``copy_project`` of it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from visionloop.config import Settings, deep_merge
from visionloop.training import pipeline

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


# Small and quick: three epochs (~0.97 test accuracy on digits).
QUICK_PARAMS: dict[str, Any] = {
    "train": {"epochs": 3},
    "registry": {"min_quality": {"metric": "accuracy", "threshold": 0.0}},
}

# The session's trained project: a quick champion that trains on half the train split, so the other
# half is clean traffic it never saw (``helpers.traffic.unseen_images``).
TRAINED_PARAMS: dict[str, Any] = {
    "train": {"epochs": 6, "limit_train_fraction": 0.5},
    "registry": {"min_quality": {"metric": "accuracy", "threshold": 0.0}},
}

# Every test project's gate, unless the test says otherwise: no waiting for a challenger's shadow predictions.
NO_SHADOW_WAIT: dict[str, Any] = {"registry": {"gate": {"shadow": {"min_predictions": 0}}}}

# Text files of a trained project that hold its absolute path (besides the MLflow database).
_PATH_HOLDERS = ("models/run.json", ".visionloop/mlartifacts/**/MLmodel")


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command with the project's virtualenv first on PATH (DVC stages call `visionloop`)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(kwargs.pop("env", {}))
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def repo_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repository's params.yaml as a dict, deep-merged with ``overrides``."""
    return deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides or {})


def create_project(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A fresh visionloop project (git + DVC) with the repository's params, pipeline and DVC config."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / ".dvc").mkdir(exist_ok=True)
    for name in ("config", ".gitignore"):
        shutil.copy(REPO / ".dvc" / name, root / ".dvc" / name)
    # A test's gate judges at once: it waits for shadow predictions only where the test asks (params.yaml waits).
    params = repo_params(deep_merge(NO_SHADOW_WAIT, overrides or {}))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # dvc.yaml depends on the source files that define training; link them in.
    (root / "src").symlink_to(REPO / "src", target_is_directory=True)
    run(["git", "init", "-q", "-b", "main"], root)
    commit(root, "project")
    return root


def commit(root: Path, message: str) -> None:
    """Commit everything git does not ignore, so that lineage sees a clean tree."""
    run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", "add", "-A"], root)
    run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", "commit", "-qm", message], root)


def train_project(root: Path, overrides: dict[str, Any] | None = None) -> Settings:
    """A project with a registered champion v1 in its own MLflow, made by the pipeline's real steps."""
    settings = Settings.load(create_project(root, overrides))
    pipeline.import_step(settings)
    pipeline.prepare_step(settings)
    pipeline.train_step(settings, trigger="test")
    pipeline.evaluate_step(settings)
    assert pipeline.register_step(settings, trigger="test")["aliases"] == ["champion"]
    return settings


def copy_project(template: Path, root: Path, overrides: dict[str, Any] | None = None) -> Settings:
    """A private copy of a trained project at ``root``: data, git, DVC, MLflow store and artifacts.

    MLflow records absolute artifact locations; they are moved to the copy, so whatever a test
    registers or logs lands in its own copy and never in ``template``, which other tests copy too.
    ``overrides`` are merged into the copy's params.yaml (for settings read after training).
    """
    shutil.copytree(template, root, symlinks=True)
    old, new = str(template.resolve()), str(root.resolve())
    _replace_in_database(root / ".visionloop" / "mlflow.db", old, new)
    for pattern in _PATH_HOLDERS:
        for path in root.glob(pattern):
            path.write_text(path.read_text().replace(old, new))
    if overrides:
        params = yaml.safe_load((root / "params.yaml").read_text())
        (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, overrides), sort_keys=False))
        commit(root, "params")
    return Settings.load(root)


def _replace_in_database(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in every text column of a SQLite database."""
    with closing(sqlite3.connect(path)) as db, db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(text in kind.upper() for text in ("CHAR", "TEXT", "CLOB")):
                    db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?)', (old, new))
