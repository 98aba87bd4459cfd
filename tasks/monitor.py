"""Tasks of the monitor flow: one per step of ``visionloop.monitoring`` (see ``monitoring.monitor``'s docstring)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from visionloop.config import Settings
from visionloop.contracts import DriftVerdict
from visionloop.labeling import scan
from visionloop.labeling.scan import EnqueueResult
from visionloop.models import registry
from visionloop.monitoring import checks, evidently_report, monitor, monitored, performance, reports
from visionloop.monitoring.evidently_report import Snapshot
from visionloop.monitoring.monitor import MonitorResult
from visionloop.monitoring.monitored import MonitoredModel
from visionloop.monitoring.performance import PerformanceResult
from visionloop.promotion import shadow


@task(name="find champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_champion(settings: Settings) -> str | None:
    """The version the champion alias points to (None: no champion yet)."""
    return registry.alias_version(settings)


@task(name="find a deferred challenger", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_pending_challenger(settings: Settings) -> str | None:
    """A challenger the gate deferred that now has its shadow predictions (``promotion.shadow``), else None."""
    return shadow.pending_challenger(settings)


@task(name="load model and reference profile", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_model(settings: Settings, model_uri: str) -> MonitoredModel:
    """The version to watch; its bundle is downloaded once per version."""
    return monitored.load_monitored(settings, model_uri)


@task(name="look for new predictions", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_news(
    settings: Settings, watched: MonitoredModel, stream_id: str | None = None
) -> tuple[checks.Watermark, bool]:
    """The log's watermark for the watched version (one stream's rows, when given), and whether its last check
    already judged it."""
    return checks.nothing_new(settings.db_url, watched.name, watched.version, stream_id)


@task(name="record the check", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def record_check(settings: Settings, result: MonitorResult, mark: checks.Watermark) -> None:
    """What this check judged, so the next one with nothing new does nothing."""
    checks.record_check(settings.db_url, result.model_name, result.model_version, mark, result.status,
                        result.mlflow_run_id, result.stream_id)


@task(name="read prediction window", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def read_window(
    settings: Settings, watched: MonitoredModel, window: int | None, since: datetime | None = None,
    stream_id: str | None = None,
) -> pd.DataFrame:
    """The latest predictions made by the watched version (of one video stream, when given)."""
    return monitor.read_window(settings, watched, window=window, since=since, stream_id=stream_id)


@task(name="check drift", cache_policy=NO_CACHE)
def check_drift(
    settings: Settings, watched: MonitoredModel, frame: pd.DataFrame, stream_id: str | None = None
) -> MonitorResult:
    """Bonferroni-corrected per-feature tests against the reference profile (Evidently)."""
    return monitor.check_window(settings, watched, frame, stream_id)


@task(name="save drift report", cache_policy=NO_CACHE)
def save_report(
    settings: Settings,
    watched: MonitoredModel,
    frame: pd.DataFrame,
    verdict: DriftVerdict,
    snapshot: Snapshot,
    out_dir: Path,
    checked: PerformanceResult | None = None,
    alert: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Evidently's HTML report, the JSON verdict, the images behind the verdict, an index page that shows the
    performance on labels (``checked``) and the alert."""
    return reports.write_outputs(settings, watched, frame, verdict, snapshot, out_dir, performance=checked,
                                 alert=alert)


@task(name="log drift report to MLflow", retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_report(settings: Settings, watched: MonitoredModel, verdict: DriftVerdict, files: dict[str, Path]) -> str:
    """A run in the monitoring experiment with the verdict's metrics and files."""
    return reports.log_check(settings, watched, verdict, files)


@task(name="add snapshot to Evidently workspace", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def add_snapshot(settings: Settings, snapshot: Snapshot, model_name: str) -> str:
    """Drift over time in `evidently ui`."""
    return evidently_report.add_to_workspace(settings, snapshot, model_name)


@task(name="check performance on feedback labels", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def check_performance(settings: Settings, watched: MonitoredModel, out_dir: Path | None) -> PerformanceResult:
    """Training-time metrics on the labeled predictions; logged to MLflow when there are enough labels."""
    return performance.monitor_performance(settings, watched.model, out_dir=out_dir)


@task(name="queue images for labeling", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def queue_for_labeling(settings: Settings, watched: MonitoredModel, drifted_features: list[str]) -> EnqueueResult:
    """The labeling queue's sampling rules over the predictions logged since the last scan."""
    result, _ = scan.enqueue_with_registry(
        settings, drifted_features=drifted_features, champion=watched.model, reference=watched.reference
    )
    return result
