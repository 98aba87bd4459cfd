"""The monitor flow: a challenger deferred for shadow predictions that now has them is gated again → champion →
anything new? → prediction window → drift check → performance on labels → alert →
report → labeling queue → the check recorded. A run that finds nothing new since the last check says so, nothing
else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, tags

from flows.promote import promote
from flows.story import retitle, tell_monitor
from tasks.alerts import raise_drift_alert
from tasks.monitor import (
    add_snapshot,
    check_drift,
    check_performance,
    find_champion,
    find_news,
    find_pending_challenger,
    load_model,
    log_report,
    queue_for_labeling,
    read_window,
    record_check,
    save_report,
)
from visionloop.config import Settings
from visionloop.models.uris import version_uri
from visionloop.monitoring.monitor import alert_payload, stale_result
from visionloop.monitoring.outputs import new_output_dir
from visionloop.monitoring.reports import alert_facts


@flow(name="monitor", log_prints=True)
def monitor(
    project_dir: str | None = None,
    window: int | None = None,
    since_minutes: float | None = None,
    alert: bool = True,
    stream_id: str | None = None,
) -> dict[str, Any]:
    """Watch the champion: its latest traffic (``window`` predictions, or those of the last ``since_minutes``;
    with ``stream_id`` only that video stream's frames) against its reference profile, its labeled traffic
    against its training-time accuracy; on drift or degradation raise the alert that may start a retrain."""
    settings = Settings.load(project_dir)
    since = datetime.now(UTC) - timedelta(minutes=since_minutes) if since_minutes is not None else None
    name = settings.model_name
    pending = find_pending_challenger(settings, return_state=True)  # deferred for shadow predictions, now logged
    if pending.is_completed() and pending.result() is not None:  # a failure here never costs the check below
        promote(candidate_version=pending.result(), trigger="flow:monitor (shadow-scored)",
                project_dir=str(settings.root), return_state=True)
    version = find_champion(settings)
    if version is None:
        print(f"nothing to monitor: {name} has no champion yet")
        retitle(f"monitor {name}: no champion yet", ["outcome:no-model"])
        return {"status": "no_model", "message": f"{name} has no champion yet", "alert": None, "alert_raised": False,
                "labeling": None}
    with tags(f"model:{name}", f"version:{version}"):
        champion = load_model(settings, version_uri(name, version))
        mark, stale = find_news(settings, champion, stream_id)
        if stale:
            result = stale_result(champion, mark, stream_id)
            print(result.message)
            tell_monitor(settings, result, None)
            return {**result.to_dict(), "alert_raised": False, "alert_action": None, "alert_id": None,
                    "labeling": None}
        frame = read_window(settings, champion, window, since, stream_id)
        result = check_drift(settings, champion, frame, stream_id)
        print(result.message)
        if result.verdict is not None:
            result.out_dir = new_output_dir(settings)
        performance_dir = result.out_dir / "performance" if result.out_dir else None
        result.performance = check_performance(settings, champion, performance_dir)
        print(result.performance.message)
        payload = alert_payload(result, result.performance)
        decision = raise_drift_alert(settings, payload) if payload and alert else None
        if result.verdict is not None and result.snapshot is not None and result.out_dir is not None:
            # the report's index page shows the performance and the alert decided just before
            facts = alert_facts(payload, decision.alert_id, decision.action, decision.reason) if decision else None
            result.files = save_report(settings, champion, frame, result.verdict, result.snapshot, result.out_dir,
                                       result.performance, facts)
            result.mlflow_run_id = log_report(settings, champion, result.verdict, result.files)
            result.evidently_snapshot_id = add_snapshot(settings, result.snapshot, name)
            print(f"report: {result.files['index']}")
        drifted = result.verdict.drifted_features if result.verdict is not None else []
        queue_state = queue_for_labeling(settings, champion, drifted, return_state=True)
        # The queue is a help for people, never a reason to lose the check or the alert.
        queued = queue_state.result().to_dict() if queue_state.is_completed() else None
        print(f"labeling queue: {queued['total_queued']} images queued from {queued['examined']} new predictions"
              if queued else f"labeling queue not updated: {queue_state.message}")
        record_check(settings, result, mark)
    if decision is not None:
        print(f"alert raised ({payload['severity']}, {payload['cause']}): {decision.action}, {decision.reason}")
    tell_monitor(settings, result, decision)
    return {
        **result.to_dict(),
        "alert": payload,
        "alert_raised": decision is not None,
        "alert_action": decision.action if decision else None,
        "alert_id": decision.alert_id if decision else None,
        "labeling": queued,
    }


if __name__ == "__main__":
    monitor()
