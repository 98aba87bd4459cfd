"""Shared fixtures: throwaway projects with the real DVC, MLflow and Prefect (local mode) stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Before Prefect is imported anywhere: a private Prefect home, no telemetry, no network.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="visionloop-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for _key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "VISIONLOOP_DB_URL", "VISIONLOOP_STATE_DIR",
             "VISIONLOOP_PROJECT_DIR", "VISIONLOOP_DVC_REMOTE", "VISIONLOOP_TOKEN"):
    os.environ.pop(_key, None)

# Small and quick: three epochs (~0.97 test accuracy on digits).
QUICK_PARAMS: dict[str, Any] = {
    "train": {"epochs": 3},
    "registry": {"min_quality": {"metric": "accuracy", "threshold": 0.0}},
}


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command with the project's virtualenv first on PATH (DVC stages call `visionloop`)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(kwargs.pop("env", {}))
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def create_project(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A fresh visionloop project (git + DVC) with the repository's params, pipeline and DVC config."""
    from visionloop.settings import deep_merge

    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / ".dvc").mkdir(exist_ok=True)
    for name in ("config", ".gitignore"):
        shutil.copy(REPO / ".dvc" / name, root / ".dvc" / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(params, overrides or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # dvc.yaml depends on the source files that define training; link them in.
    (root / "src").symlink_to(REPO / "src", target_is_directory=True)
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", "add", "-A"], root)
    run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", "commit", "-qm", "project"], root)
    return root


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    def make(overrides: dict[str, Any] | None = None, name: str = "project") -> Path:
        return create_project(tmp_path / name, overrides if overrides is not None else QUICK_PARAMS)

    return make
