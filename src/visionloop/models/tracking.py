"""The MLflow connection: the one client, experiments with a known artifact location, and run logging.

Every MLflow client, experiment and run of the project is made here, so they all point at
``Settings.tracking_uri`` and put new experiments' artifacts under ``Settings.artifact_root``.
``log_run`` is the one way a step records a run (training, evaluation, drift and performance
checks, promotion decisions); ``open_run`` is the same for a step that logs while it works
(training hands the run to Lightning).

What the MLflow UI shows is decided here too: experiments open in the model-training view (tag
``mlflow.experimentKind``), runs carry a readable name and a description (``mlflow.note.content``),
training data is a dataset input, and ``run_link``/``model_version_link`` point other UIs at a run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict, Unpack

import mlflow
import mlflow.data
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from visionloop.config import Settings

# A file or folder to log, and the artifact folder it goes into (None: the run's root).
Artifact = tuple[Path, str | None]

# MLflow 3 opens an experiment in its GenAI view unless this tag names another kind.
EXPERIMENT_KIND_TAG, TRAINING_VIEW = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
# MLflow 3.17's UI ignores that tag behind its GenAI / Model-training switch (GenAI unless the page address says
# otherwise): every link the project hands out asks for the model-training view.
TRAINING_VIEW_QUERY = "?workflowType=machine_learning"


class RunSpec(TypedDict, total=False):
    """Which run: a new one (named ``run_name``, tagged ``tags``, described by ``description``) or the
    existing ``run_id``."""

    run_id: str | None
    run_name: str | None
    tags: Mapping[str, str] | None
    description: str | None


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
    and ``create`` is false). Every experiment of the project opens in MLflow's model-training view."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if create and experiment.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before the tag, or by another tool
            mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_VIEW)
        return experiment.experiment_id
    if not create:
        return None
    root = settings.artifact_root
    try:
        return mlflow_client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None,
                                               tags={EXPERIMENT_KIND_TAG: TRAINING_VIEW})
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
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_key, run_name=run_name, tags=tags,
                          description=run.get("description")) as active:
        yield active


def describe_run(settings: Settings, run_id: str, *, name: str | None = None, note: str | None = None) -> None:
    """Rename a run and/or replace its description, e.g. once the version it produced is known."""
    mlflow_client = client(settings)
    if name is not None:
        mlflow_client.update_run(run_id, name=name)
    if note is not None:
        mlflow_client.set_tag(run_id, NOTE_TAG, note)


def registered_run_name(run_name: str | None, version: str) -> str:
    """The name of a training run once its model is a registry version: the version after the verb
    (``train`` → ``train v3``, ``retrain fine_tuning`` → ``retrain v3 fine_tuning``)."""
    verb, _, rest = (run_name or "train").partition(" ")
    return " ".join(part for part in (verb, f"v{version}", rest) if part)


def log_dataset(frame: pd.DataFrame, *, name: str, source: str, context: str, tags: Mapping[str, str]) -> None:
    """Record ``frame`` as a dataset input of the active run (the UI's Datasets column); ``tags`` say which
    data version it is."""
    with warnings.catch_warnings():  # MLflow 3.17 registers its local-file source twice and says so on every call
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(frame, source=source, name=name)
    mlflow.log_input(dataset, context=context, tags=dict(tags))


def run_link(settings: Settings, run_id: str) -> str:
    """Where a person opens the run: its page in the MLflow UI, or ``runs:/ID`` without a tracking server."""
    if not settings.tracking_uri.startswith(("http://", "https://")):
        return f"runs:/{run_id}"
    experiment = client(settings).get_run(run_id).info.experiment_id
    return f"{settings.tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}{TRAINING_VIEW_QUERY}"


def model_version_link(settings: Settings, version: str, name: str | None = None) -> str:
    """A registry version's page in the MLflow UI, or ``models:/NAME/VERSION`` without a tracking server."""
    name = name or settings.model_name
    if not settings.tracking_uri.startswith(("http://", "https://")):
        return f"models:/{name}/{version}"
    return f"{settings.tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}{TRAINING_VIEW_QUERY}"


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


def run_text(settings: Settings, run_id: str, artifact_file: str) -> str | None:
    """A text file at the root of a run's artifacts (None: the run has none), read through the tracking server:
    with proxied artifacts the reader needs no storage credentials."""
    if artifact_file not in {entry.path for entry in client(settings).list_artifacts(run_id)}:
        return None
    point_mlflow_at(settings.tracking_uri)
    return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")


def add_artifacts(settings: Settings, run_id: str, files: Iterable[Artifact]) -> None:
    """Add files to a finished run's artifacts without reopening it (its status and end time stay), e.g. the
    ONNX export stored with a version at registration (``models.onnx_registry``)."""
    mlflow_client = client(settings)
    for path, artifact_path in files:
        mlflow_client.log_artifact(run_id, str(path), artifact_path)


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
