"""The retrain flow: a drift alert → new data version → fine-tuned challenger → the ``promote`` flow's gate.

The gate runs as the ``promote`` flow itself, a subflow: in Prefect's UI every retrain shows its promotion
run (the same flow ``visionloop promote`` and the ``promote`` deployment run on demand).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, runtime, tags

from flows.promote import promote
from flows.story import retitle, retrain_title, tell_promotion
from tasks.retrain import (
    close_alert,
    collect_labeled,
    decide,
    evaluate_challenger,
    prepare_snapshot,
    push_data,
    register_challenger,
    snapshot_data,
    train_challenger,
)
from visionloop.config import Settings
from visionloop.contracts import PromotionRecord
from visionloop.data import dvcrepo
from visionloop.healing.alerts import RETRAIN_STARTED
from visionloop.healing.retrain import RetrainWorkspace
from visionloop.models.uris import alias_uri


@flow(name="retrain", log_prints=True)
def retrain(verdict: dict[str, Any] | None = None, trigger: str = "manual", project_dir: str | None = None) -> dict:
    """Heal the model: retrain by transfer learning from the champion on data + new labels, then gate."""
    settings = Settings.load(project_dir)
    # A run asked for by hand is explicit: it overrides the cooldown (never a running retrain).
    verdict = verdict or {"severity": "critical", "drift": None, "reason": f"requested ({trigger})"}
    if verdict.get("alert_id") and verdict.get("action") == RETRAIN_STARTED:
        alert_id = str(verdict["alert_id"])  # decided when the alert was raised (tasks.alerts)
    else:  # an event from elsewhere, or a manual run: the same policy decides here
        run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
        decision = decide(settings, verdict, run_id)
        if not decision.retrain:
            print(f"alert recorded, no retrain: {decision.reason}")
            retitle(f"retrain {settings.model_name}: no retrain ({decision.action.replace('_', ' ')})",
                    ["decision:no-retrain", f"alert:{decision.action}"])
            return {"retrained": False, "action": decision.action, "reason": decision.reason}
        alert_id = decision.alert_id

    outcome = "failed: see the flow run's logs"
    try:
        with tags(f"model:{settings.model_name}"):
            additions = collect_labeled(settings)
            snapshot = snapshot_data(settings, additions)
            if dvcrepo.is_dvc_repo(settings.root):
                push_data(settings)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            workspace = RetrainWorkspace(settings.state_dir / "retrain" / stamp)
            prepare_snapshot(settings, snapshot, workspace)
            base = alias_uri(settings.model_name)
            train_challenger(settings, workspace, snapshot, base, trigger=f"retrain:{trigger}")
            metrics = evaluate_challenger(settings, workspace)
            registered = register_challenger(settings, workspace, metrics, trigger=f"retrain:{trigger}")
            record = promote(candidate_version=str(registered.version), trigger=f"retrain:{trigger}",
                             project_dir=str(settings.root))
        outcome = f"{record['decision']} v{registered.version}: {record['reason']}"
        decided = PromotionRecord(**record)
        tell_promotion(settings, decided, retrain_title(decided), registered.run_id, facts=[
            f"{len(additions)} new labeled images → data version {snapshot.data_version.dvc_hash}",
            f"challenger v{registered.version}: test accuracy {metrics['accuracy']:.4f} on the new data version"])
        print(f"{len(additions)} new labeled images → data {snapshot.data_version.dvc_hash}; "
              f"challenger v{registered.version} accuracy {metrics['accuracy']:.4f}; {outcome}")
        return {"retrained": True, "data_version": snapshot.data_version.dvc_hash,
                "version": str(registered.version), "decision": record["decision"], "reason": record["reason"],
                "metrics": metrics, "n_added": len(additions)}
    finally:
        close_alert(settings, alert_id, outcome, verdict.get("report_dir"))


if __name__ == "__main__":
    retrain()
