"""The drift alert: decide (cooldown, one retrain at a time), record, and emit the Prefect event."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from visionloop.config import Settings
from visionloop.contracts import DRIFT_EVENT, DRIFT_SUPPRESSED_EVENT, model_resource_id
from visionloop.healing import alerts


@task(name="raise drift alert", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def raise_drift_alert(settings: Settings, payload: dict[str, Any]) -> alerts.AlertDecision:
    """Record the alert; emit the retrain-triggering event only when the healing policy allows a retrain."""
    decision = alerts.decide_retrain(settings, payload)
    name = settings.model_name
    emit_event(
        event=DRIFT_EVENT if decision.retrain else DRIFT_SUPPRESSED_EVENT,
        resource={"prefect.resource.id": model_resource_id(name), "prefect.resource.name": name},
        payload={**payload, "alert_id": decision.alert_id, "action": decision.action, "reason": decision.reason},
    )
    return decision
