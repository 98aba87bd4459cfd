"""The training flow: import → validate & split → version → train → evaluate → register."""

from __future__ import annotations

from typing import Any

from prefect import flow, tags

from flows.story import tell_training
from tasks.training import (
    evaluate_model,
    import_data,
    prepare_data,
    push_data,
    record_in_dvc,
    register_model,
    train_model,
    version_data,
)
from visionloop.config import Settings
from visionloop.data import dvcrepo
from visionloop.data.prepare import source_from_settings

STAGES = ["import", "prepare", "train", "evaluate", "register"]


@flow(name="training", log_prints=True)
def training(project_dir: str | None = None, epochs: int | None = None, trigger: str = "flow:training") -> dict:
    """Train a model on the project's data and register it, the same steps as `dvc repro`."""
    overrides: dict[str, Any] = {"train": {"epochs": epochs}} if epochs is not None else {}
    settings = Settings.load(project_dir, overrides=overrides)
    with tags(f"model:{settings.model_name}"):
        embedded = source_from_settings(settings) == settings.path(settings.params.data.raw_dir)
        if embedded:
            import_data(settings)
        report = prepare_data(settings)
        version = version_data(settings)
        result = train_model(settings, version, trigger)
        metrics = evaluate_model(settings)
        registration = register_model(settings, trigger)
        if dvcrepo.is_dvc_repo(settings.root) and not overrides:
            record_in_dvc(settings, STAGES if embedded else STAGES[1:])
            push_data(settings)
    tell_training(settings, result["run_id"], version.dvc_hash, metrics, registration)
    print(f"trained run {result['run_id']} on data {version.dvc_hash}: "
          f"accuracy {metrics['accuracy']:.4f}, registered v{registration['version']} {registration['aliases']}")
    return {"run_id": result["run_id"], "data_version": version.dvc_hash, "metrics": metrics,
            "registration": registration, "data_report": report}


if __name__ == "__main__":
    training()
