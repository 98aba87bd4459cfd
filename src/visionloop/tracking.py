"""MLflow connection: the tracking URI and experiments with a known artifact location."""

from __future__ import annotations

from typing import Any

from visionloop.settings import Settings


def use_tracking(settings: Settings, experiment_key: str = "experiment") -> str:
    """Point MLflow at the configured store; create the experiment if missing. Returns its id."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
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
