"""Tasks of the training pipeline: one per DVC stage, each calling visionloop.training.pipeline."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from visionloop.config import Settings
from visionloop.contracts import DataVersion
from visionloop.data import dvcrepo
from visionloop.data.lineage import data_version
from visionloop.data.prepare import source_from_settings
from visionloop.training import pipeline


@task(name="import embedded data", cache_policy=NO_CACHE)
def import_data(settings: Settings) -> int:
    """Write the embedded digits as PNG files under data/raw."""
    return pipeline.import_step(settings)


@task(name="validate and split data", cache_policy=NO_CACHE)
def prepare_data(settings: Settings) -> dict[str, Any]:
    """Quarantine bad images, canonicalise the rest, split train/val/test."""
    return pipeline.prepare_step(settings).report


@task(name="version data", cache_policy=NO_CACHE)
def version_data(settings: Settings) -> DataVersion:
    """The DVC hash of the source images: the data version every model records."""
    return data_version(settings.root, source_from_settings(settings))


@task(name="train model", cache_policy=NO_CACHE)
def train_model(settings: Settings, version: DataVersion, trigger: str, **kwargs: Any) -> dict[str, Any]:
    """Lightning training tracked in MLflow; writes the model bundle."""
    return pipeline.train_step(settings, trigger=trigger, data_version=version, **kwargs).to_json()


@task(name="evaluate model", cache_policy=NO_CACHE)
def evaluate_model(settings: Settings) -> dict[str, float]:
    """Test-split metrics, confusion matrix and ROC curves."""
    return pipeline.evaluate_step(settings).metrics()


@task(name="register model", retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_model(settings: Settings, trigger: str) -> dict[str, Any]:
    """New registry version as challenger (champion if it is the first good one)."""
    return pipeline.register_step(settings, trigger=trigger)


@task(name="record outputs in dvc.lock", cache_policy=NO_CACHE)
def record_in_dvc(settings: Settings, stages: list[str]) -> None:
    """Keep `dvc status` true to what the flow produced."""
    dvcrepo.commit_stages(settings, stages)


@task(name="push data to DVC remote", retries=3, retry_delay_seconds=10, cache_policy=NO_CACHE)
def push_data(settings: Settings) -> int:
    """Store the data snapshot in the DVC remote."""
    return dvcrepo.push(settings)
