"""Shared fixtures: throwaway projects with the real DVC, MLflow and Prefect (local mode) stack."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Before Prefect is imported anywhere: a private Prefect home, no telemetry, no network.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="visionloop-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for _key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "VISIONLOOP_DB_URL", "VISIONLOOP_STATE_DIR",
             "VISIONLOOP_PROJECT_DIR", "VISIONLOOP_DVC_REMOTE", "VISIONLOOP_TOKEN"):
    os.environ.pop(_key, None)

from helpers.project import QUICK_PARAMS, create_project  # noqa: E402 - after the environment is set


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    def make(overrides: dict[str, Any] | None = None, name: str = "project") -> Path:
        return create_project(tmp_path / name, overrides if overrides is not None else QUICK_PARAMS)

    return make
