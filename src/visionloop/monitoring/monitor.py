"""Production monitoring: the latest window of the prediction log against the champion's reference profile.

The steps, one function each, so that ``visionloop monitor`` runs them in a row (``run_monitor``) and the
Prefect ``monitor`` flow runs each one as a task:

1. ``monitored.load_monitored`` — the model version to watch: the registry's champion unless told
   otherwise, with its reference profile (seam 3); ``checks.nothing_new`` — whether anything (a prediction, a
   feedback label) reached the log for it since its last check. Nothing new: the run says so and does nothing
   else (``stale_result``): no report, no MLflow run, no Evidently snapshot, no alert.
2. ``read_window`` — the latest ``monitoring.window`` predictions (or those since a time) **made by that
   version**. Predictions of other versions come from another network: their embedding and output
   features are not comparable with this version's reference, so they are left out. Right after a
   promotion the window is therefore small until the new version has served enough traffic. With a stream id
   (``visionloop monitor --stream ID``) only that video stream's frames are read, and the check's watermark
   (step 1, 7) is that stream's.
3. ``check_window`` — the drift tests (``visionloop.monitoring.drift``, run inside Evidently's report by
   ``evidently_report.check_drift``) on the feature columns: image statistics, reduced embedding,
   predicted class, confidence and the softmax vector; never the identifiers, times or paths of the log.
   Fewer than ``monitoring.min_window`` predictions give a "not enough data" result: no verdict, no alert.
4. ``performance.monitor_performance`` — the version's predictions that got feedback labels, scored.
5. ``alert_payload`` — what the alert carries: the verdict summary (``DriftVerdict.summary``) with
   ``cause``, merged with the performance degradation when labels show one, and the report folder.
6. ``reports.write_outputs`` — the report folder, whose index page shows the performance and the alert;
   ``reports.log_check`` — the MLflow run; ``evidently_report.add_to_workspace`` — the snapshot in the
   Evidently workspace (drift over time).
7. ``checks.record_check`` — the log's watermark the check judged, for the next run's step 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import DriftVerdict, Severity
from visionloop.monitoring.checks import STALE, Watermark, nothing_new, record_check
from visionloop.monitoring.drift import DriftThresholds, verdict_json
from visionloop.monitoring.evidently_report import Snapshot, add_to_workspace, check_drift
from visionloop.monitoring.features import feature_columns
from visionloop.monitoring.monitored import MonitoredModel, load_monitored
from visionloop.monitoring.outputs import new_output_dir
from visionloop.monitoring.performance import PerformanceResult, monitor_performance
from visionloop.monitoring.reports import log_check, write_outputs
from visionloop.store.predlog import PredictionLog

Status = Literal["ok", "drift", "not_enough_data", "no_new_data"]
SEVERITY_ORDER: dict[str, int] = {"none": 0, "warning": 1, "critical": 2}


@dataclass
class MonitorResult:
    """The outcome of one monitoring run: the drift verdict, where it was written and logged, the alert."""

    status: Status
    model_name: str
    model_version: str
    n_window: int
    message: str
    verdict: DriftVerdict | None = None
    snapshot: Snapshot | None = None  # Evidently's; not part of to_dict
    columns: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    evidently_snapshot_id: str | None = None
    performance: PerformanceResult | None = None
    stream_id: str | None = None  # the window was this video stream's rows only

    @property
    def alert(self) -> dict[str, Any] | None:
        """The alert payload (``alert_payload``), or None when nothing calls for one."""
        return alert_payload(self, self.performance)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: for ``--json``, the flow's result and the tests."""
        return {
            **{key: getattr(self, key)
               for key in ("status", "model_name", "model_version", "stream_id", "n_window", "message")},
            "verdict": json.loads(verdict_json(self.verdict)) if self.verdict else None,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "files": {k: str(v) for k, v in self.files.items()},
            "mlflow_run_id": self.mlflow_run_id,
            "evidently_snapshot_id": self.evidently_snapshot_id,
            "performance": self.performance.to_dict() if self.performance else None,
            "alert": self.alert,
        }


# --- 1. anything new? ---------------------------------------------------------------------------------


def stale_result(monitored: MonitoredModel, mark: Watermark, stream_id: str | None = None) -> MonitorResult:
    """The result of a check that found nothing new since the last one: it says so, and that is all."""
    newest = f", newest at {mark.newest_prediction_at:%Y-%m-%d %H:%M:%S} UTC" if mark.newest_prediction_at else ""
    return MonitorResult(
        status=STALE, model_name=monitored.name, model_version=monitored.version, n_window=0, stream_id=stream_id,
        message=f"nothing new since the last check: {mark.n_predictions} prediction(s) by {monitored.name} "
        f"v{monitored.version}{_of_stream(stream_id)}{newest}, no new prediction or feedback label; no check, "
        "no report, no alert",
    )


def _of_stream(stream_id: str | None) -> str:
    return f" in stream {stream_id!r}" if stream_id is not None else ""


# --- 2. the window -----------------------------------------------------------------------------------


def read_window(
    settings: Settings, monitored: MonitoredModel, *, window: int | None = None, since: datetime | None = None,
    stream_id: str | None = None,
) -> pd.DataFrame:
    """The monitored version's latest ``window`` predictions (default ``monitoring.window``), oldest first.

    With ``since`` and no ``window``: every prediction since then. With ``stream_id``: only that video stream's
    frames (``visionloop stream`` / the ``/stream`` WebSocket log it with each frame).
    """
    if window is None and since is None:
        window = settings.params.monitoring.window
    prediction_log = PredictionLog(settings.db_url)
    try:
        frame = prediction_log.read_window(last_n=window, since=since, model_version=monitored.version,
                                           stream_id=stream_id)
    finally:
        prediction_log.dispose()
    return frame[frame["model_name"] == monitored.name].reset_index(drop=True)


# --- 3. the check ------------------------------------------------------------------------------------


def monitored_columns(monitored: MonitoredModel, frame: pd.DataFrame) -> list[str]:
    """The feature columns present in the reference and with values in the window, in the schema's order."""
    model = monitored.model
    return [
        c
        for c in feature_columns(model.classes, model.reduction)
        if c in monitored.reference.columns and c in frame.columns and frame[c].notna().any()
    ]


def check_window(
    settings: Settings, monitored: MonitoredModel, frame: pd.DataFrame, stream_id: str | None = None
) -> MonitorResult:
    """Drift tests of the window (``stream_id``: read from that stream alone) against the reference; too small
    a window is reported, not tested."""
    params = settings.params.monitoring
    n = len(frame)
    base = {"model_name": monitored.name, "model_version": monitored.version, "n_window": n, "stream_id": stream_id}
    of_stream = _of_stream(stream_id)
    if n < params.min_window:
        return MonitorResult(
            status="not_enough_data",
            message=f"not enough data: {n} prediction(s) by {monitored.name} v{monitored.version}{of_stream} in "
            "the window, "
            f"at least {params.min_window} needed (monitoring.min_window); no drift check, no alert",
            **base,
        )
    columns = monitored_columns(monitored, frame)
    times = pd.to_datetime(frame["created_at"], utc=True)
    verdict, snapshot = check_drift(
        monitored.reference,
        frame[columns],
        DriftThresholds.of(params),
        columns=columns,
        model_name=monitored.name,
        model_version=monitored.version,
        window_start=times.min().isoformat(),
        window_end=times.max().isoformat(),
    )
    if verdict.drift:
        message = (
            f"drift ({verdict.severity}): {len(verdict.drifted_features)} of {len(columns)} features drifted "
            f"({', '.join(verdict.drifted_features)}) in {n} predictions by v{monitored.version}{of_stream}"
        )
    else:
        message = f"no drift in {n} predictions by v{monitored.version}{of_stream} ({len(columns)} features tested)"
    return MonitorResult(
        status="drift" if verdict.drift else "ok",
        message=message,
        verdict=verdict,
        snapshot=snapshot,
        columns=columns,
        **base,
    )


# --- 6. the alert ------------------------------------------------------------------------------------


def worst(*severities: str) -> Severity:
    """The most severe of ``none`` / ``warning`` / ``critical``."""
    return max(severities, key=lambda s: SEVERITY_ORDER.get(s, 0))  # type: ignore[return-value]


def alert_payload(result: MonitorResult | None, performance: PerformanceResult | None = None) -> dict[str, Any] | None:
    """The alert event's payload, or None when neither drift nor a performance degradation was found.

    Drift: the verdict summary (``DriftVerdict.summary``) with ``cause`` "drift". A degradation adds
    ``performance`` (accuracy now and at training time, the drop, the number of labels) and "performance" to
    ``cause``; ``severity`` is the worse of the two. One monitoring run raises at most one alert. (``cause``,
    not ``reason``: the alert task adds the healing decision's ``reason``.)
    """
    drift = result is not None and result.verdict is not None and result.verdict.drift
    degraded = performance is not None and performance.degraded
    if not drift and not degraded:
        return None
    if drift:
        payload = result.verdict.summary()  # type: ignore[union-attr]
    else:
        payload = {
            "drift": False,
            "severity": "none",
            "share_drifted": round(result.verdict.share_drifted, 4) if result and result.verdict else 0.0,
            "drifted_features": [],
            "model_name": performance.model_name,  # type: ignore[union-attr]
            "model_version": performance.model_version,  # type: ignore[union-attr]
            "n_current": result.n_window if result else 0,
            "created_at": datetime.now(UTC).isoformat(),
        }
    causes = ["drift"] if drift else []
    if degraded:
        causes.append("performance")
        payload["performance"] = performance.summary()  # type: ignore[union-attr]
        payload["severity"] = worst(payload["severity"], performance.severity)  # type: ignore[union-attr]
    payload["cause"] = ", ".join(causes)
    if result is not None and result.stream_id is not None:
        payload["stream_id"] = result.stream_id  # the drift was found in this video stream's frames
    if result is not None and result.out_dir is not None:
        payload["report_dir"] = str(result.out_dir)  # the retrain it causes adds its outcome to the report's page
    return payload


# --- all of it ---------------------------------------------------------------------------------------


def run_monitor(
    settings: Settings, model: str | None = None, *, window: int | None = None, since: datetime | None = None,
    performance: bool = True, stream_id: str | None = None,
) -> MonitorResult:
    """One monitoring run without Prefect: check, write, log to MLflow and Evidently; the alert is in the result.

    ``model``: what to watch (``monitored.load_monitored``; default the champion). With ``performance``, the
    version's predictions that have feedback labels are scored too; a degradation joins the alert. When nothing
    reached the log for the version since its last check, the result only says so (``stale_result``). With
    ``stream_id`` the window (and what counts as new) is that video stream's frames only.
    """
    monitored = load_monitored(settings, model)
    mark, stale = nothing_new(settings.db_url, monitored.name, monitored.version, stream_id)
    if stale:
        return stale_result(monitored, mark, stream_id)
    frame = read_window(settings, monitored, window=window, since=since, stream_id=stream_id)
    result = check_window(settings, monitored, frame, stream_id)
    if result.verdict is not None:
        result.out_dir = new_output_dir(settings)
    if performance:  # before the report, whose index page shows it
        perf_dir = result.out_dir / "performance" if result.out_dir else None
        result.performance = monitor_performance(settings, monitored.model, out_dir=perf_dir)
    if result.verdict is not None and result.snapshot is not None and result.out_dir is not None:
        result.files = write_outputs(settings, monitored, frame, result.verdict, result.snapshot, result.out_dir,
                                     performance=result.performance)
        result.mlflow_run_id = log_check(settings, monitored, result.verdict, result.files)
        result.evidently_snapshot_id = add_to_workspace(settings, result.snapshot, monitored.name)
    record_check(settings.db_url, monitored.name, monitored.version, mark, result.status, result.mlflow_run_id,
                 stream_id)
    return result
