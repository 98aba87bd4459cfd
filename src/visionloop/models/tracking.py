"""MLflow connection: the tracking URI and experiments with a known artifact location."""

from __future__ import annotations

from typing import Any

from visionloop.config import Settings


def point_mlflow_at(uri: str) -> None:
    """Set MLflow's process-wide tracking and registry URI without touching the environment.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``; left there it
    would override the project's own store for every later ``Settings`` in this process.
    """
    import os

    import mlflow

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def use_tracking(settings: Settings, experiment_key: str = "experiment") -> str:
    """Point MLflow at the configured store; create the experiment if missing. Returns its id."""
    import mlflow

    point_mlflow_at(settings.tracking_uri)
    name = settings.section("mlflow")[experiment_key]
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        root = settings.artifact_root
        experiment_id = mlflow.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params → ``a.b.c`` keys, values as short strings (MLflow's param limit is 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat
