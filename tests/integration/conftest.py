"""Fixtures of the integration tests: real components on real data, in one process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.models import DigitsCNN, train_digits_cnn
from helpers.project import copy_project
from helpers.traffic import unseen_images

from visionloop.config import Settings
from visionloop.monitoring.monitored import MonitoredModel, load_monitored
from visionloop.store.predlog import PredictionLog


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsCNN:
    """A small CNN trained once per session on real digits, as a bundle folder, with the held-out digits."""
    return train_digits_cnn(tmp_path_factory.mktemp("digits-cnn"))


@pytest.fixture(scope="module")
def trained_settings(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """This module's own copy of the session's trained project: its tests share the copy's MLflow and champion."""
    return copy_project(trained_project, tmp_path_factory.mktemp("trained-copy") / "project")


@pytest.fixture(scope="module")
def champion(trained_settings: Settings) -> MonitoredModel:
    return load_monitored(trained_settings)


@pytest.fixture(scope="module")
def clean(trained_settings: Settings) -> tuple[list[np.ndarray], list[str]]:
    """Clean digits the champion never saw, with their labels."""
    return unseen_images(trained_settings)


@pytest.fixture
def fresh_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty prediction log for one test (the project, its MLflow and champion stay shared)."""
    monkeypatch.setenv("VISIONLOOP_DB_URL", f"sqlite:///{tmp_path / 'predictions.db'}")
    return tmp_path


@pytest.fixture
def plog(tmp_path: Path) -> Iterator[PredictionLog]:
    """An empty prediction log in a SQLite file of this test's own."""
    log = PredictionLog(f"sqlite:///{tmp_path / 'predictions.db'}")
    yield log
    log.dispose()
