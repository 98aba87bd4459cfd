"""The MLflow connection: the one client, experiments with a known artifact location, and run logging.

Every MLflow client, experiment and run of the project is made here, so they all point at
``Settings.tracking_uri`` and put new experiments' artifacts under ``Settings.artifact_root``.
``log_run`` is the one way a step records a run (training, evaluation, drift and performance
checks, promotion decisions); ``open_run`` is the same for a step that logs while it works
(training hands the run to Lightning).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict, Unpack

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from visionloop.config import Settings

# A file or folder to log, and the artifact folder it goes into (None: the run's root).
Artifact = tuple[Path, str | None]


class RunSpec(TypedDict, total=False):
    """Which run: a new one (named ``run_name``, tagged ``tags``) or the existing ``run_id``."""

    run_id: str | None
    run_name: str | None
    tags: Mapping[str, str] | None


def point_mlflow_at(uri: str) -> None:
    """Set MLflow's process-wide tracking and registry URI without touching the environment.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``; left there it
    would override the project's own store for every later ``Settings`` in this process.
    """
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def client(settings: Settings) -> MlflowClient:
    """A client of the project's tracking server and model registry (they are one store here)."""
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def experiment_id(settings: Settings, name: str, *, create: bool = True) -> str | None:
    """Id of the experiment ``name``, created with the project's artifact root if missing (None: missing
    and ``create`` is false)."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    root = settings.artifact_root
    try:
        return mlflow_client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except MlflowException:  # created by a concurrent caller in the meantime
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def open_run(settings: Settings, experiment: str | None = None, **run: Unpack[RunSpec]) -> Iterator[mlflow.ActiveRun]:
    """The active MLflow run of this thread: a new run in ``experiment`` (default ``mlflow.experiment``),
    or the existing ``run_id`` resumed. Ended (FINISHED, or FAILED on an exception) on leaving."""
    point_mlflow_at(settings.tracking_uri)
    run_id = run.get("run_id")
    experiment_key = None
    if run_id is None:
        experiment_key = experiment_id(settings, experiment or settings.params.mlflow.experiment)
    tags, run_name = dict(run.get("tags") or {}), run.get("run_name")
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_key, run_name=run_name, tags=tags) as active:
        yield active


def log_run(
    settings: Settings,
    experiment: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    files: Iterable[Artifact] = (),
    texts: Mapping[str, str] | None = None,
    **run: Unpack[RunSpec],
) -> str:
    """Record one run (``run``: new, or ``run_id`` added to) and return its id.

    Non-finite metrics are left out (MLflow cannot chart them); ``files`` may name folders;
    ``texts`` maps an artifact file name to its content.
    """
    with open_run(settings, experiment, **run) as active:
        if params:
            mlflow.log_params(dict(params))
        finite = {key: float(value) for key, value in (metrics or {}).items() if math.isfinite(float(value))}
        if finite:
            mlflow.log_metrics(finite)
        for path, artifact_path in files:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)
        for artifact_file, text in (texts or {}).items():
            mlflow.log_text(text, artifact_file)
        return active.info.run_id


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params → ``a.b.c`` keys, values as short strings (MLflow's param limit is 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat
