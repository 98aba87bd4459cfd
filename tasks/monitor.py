"""Tasks of the monitor flow: one per step of visionloop.monitoring.monitor and visionloop.monitoring.performance."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from visionloop.config import Settings
from visionloop.labeling import queue as labeling
from visionloop.monitoring import monitor as monitoring
from visionloop.monitoring import performance
from visionloop.monitoring.monitor import MonitoredModel, MonitorResult
from visionloop.monitoring.performance import PerformanceResult


@task(name="find champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_champion(settings: Settings) -> str | None:
    """The version the champion alias points to (None: no champion yet)."""
    return monitoring.champion_version(settings)


@task(name="load model and reference profile", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_model(settings: Settings, model_uri: str) -> MonitoredModel:
    """The version to watch; its bundle is downloaded once per version."""
    return monitoring.load_monitored(settings, model_uri)


@task(name="read prediction window", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def read_window(
    settings: Settings, monitored: MonitoredModel, window: int | None, since: datetime | None = None
) -> pd.DataFrame:
    """The latest predictions made by the watched version."""
    return monitoring.read_window(settings, monitored, window=window, since=since)


@task(name="check drift", cache_policy=NO_CACHE)
def check_drift(settings: Settings, monitored: MonitoredModel, frame: pd.DataFrame) -> MonitorResult:
    """Bonferroni-corrected per-feature tests against the reference profile (Evidently)."""
    return monitoring.check_window(settings, monitored, frame)


@task(name="save drift report", cache_policy=NO_CACHE)
def save_report(
    settings: Settings, monitored: MonitoredModel, frame: pd.DataFrame, result: MonitorResult, out_dir: Path
) -> dict[str, Path]:
    """Evidently's HTML report, the JSON verdict, the images behind the verdict, an index page."""
    return monitoring.write_outputs(settings, monitored, frame, result, out_dir)


@task(name="log drift report to MLflow", retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_report(settings: Settings, result: MonitorResult, files: dict[str, Path]) -> str:
    """A run in the monitoring experiment with the verdict's metrics and files."""
    return monitoring.log_check(settings, result, files)


@task(name="add snapshot to Evidently workspace", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def add_snapshot(settings: Settings, result: MonitorResult) -> str:
    """Drift over time in `evidently ui`."""
    return monitoring.add_to_workspace(settings, result)


@task(name="check performance on feedback labels", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def check_performance(settings: Settings, monitored: MonitoredModel, out_dir: Path | None) -> PerformanceResult:
    """Training-time metrics on the labeled predictions; logged to MLflow when there are enough labels."""
    return performance.monitor_performance(settings, monitored.model, out_dir=out_dir)


@task(name="queue images for labeling", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def queue_for_labeling(
    settings: Settings, monitored: MonitoredModel, drifted_features: list[str]
) -> labeling.EnqueueResult:
    """The labeling queue's sampling rules over the predictions logged since the last scan."""
    result, _ = labeling.enqueue_with_registry(
        settings, drifted_features=drifted_features, champion=monitored.model, reference=monitored.reference
    )
    return result
