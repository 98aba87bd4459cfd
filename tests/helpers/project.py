"""Throwaway visionloop projects with the real DVC, MLflow and Prefect (local mode) stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


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
    from visionloop.config import deep_merge

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
