"""Shared fixtures: throwaway projects with the real DVC, MLflow and Prefect (local mode) stack.

Fixtures used by one kind of test only live in that kind's own conftest (``tests/integration/conftest.py``);
plain factories live in ``tests/helpers`` (imported as ``helpers``). A test module never imports another.
"""

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
# Prefect's temporary server gets 20 s to start; on 2 busy cores its first start (a new database) can take longer.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# No test downloads weights: timm/huggingface_hub fail instead of reaching the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
SERVICE_VARIABLES = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "VISIONLOOP_DB_URL", "VISIONLOOP_STATE_DIR",
                     "VISIONLOOP_PROJECT_DIR", "VISIONLOOP_DVC_REMOTE", "VISIONLOOP_TOKEN", "VISIONLOOP_ARTIFACT_ROOT",
                     "VISIONLOOP_POSTGRES_URL", "VISIONLOOP_ARTIFACTS_DEST")
for _key in SERVICE_VARIABLES:
    os.environ.pop(_key, None)

from helpers.postgres import postgres_server, postgres_url  # noqa: E402, F401 - fixtures, registered by import
from helpers.project import QUICK_PARAMS, TRAINED_PARAMS, copy_project, create_project, train_project  # noqa: E402

from visionloop.config import Settings  # noqa: E402

KINDS = ("unit", "integration", "e2e")  # the folders under tests/, fastest first


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the kinds fastest first (a unit failure shows in seconds), and mark every end-to-end test ``e2e``."""

    def kind(item: pytest.Item) -> int:
        folder = item.path.relative_to(Path(__file__).parent).parts[0]
        return KINDS.index(folder) if folder in KINDS else len(KINDS)

    items.sort(key=kind)  # stable: each module's tests stay together, so module fixtures are made once
    for item in items:
        if kind(item) == KINDS.index("e2e"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """A factory of fresh, untrained projects under this test's ``tmp_path``."""

    def make(overrides: dict[str, Any] | None = None, name: str = "project") -> Path:
        return create_project(tmp_path / name, overrides if overrides is not None else QUICK_PARAMS)

    return make


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project trained once per session (``TRAINED_PARAMS``, champion v1). A template: tests work on a copy."""
    with pytest.MonkeyPatch.context() as env:  # its state, MLflow and log inside the project, whatever a test set
        for key in SERVICE_VARIABLES:
            env.delenv(key, raising=False)
        return train_project(tmp_path_factory.mktemp("trained") / "project", TRAINED_PARAMS).root


@pytest.fixture
def trained_copy(trained_project: Path, tmp_path: Path) -> Settings:
    """This test's own copy of the session's trained project."""
    return copy_project(trained_project, tmp_path / "project")
