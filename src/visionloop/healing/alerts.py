"""Self-healing decisions: which drift alerts start a retrain, and the record of every alert.

An alert starts a retrain unless one is running or one started less than
``retrain.cooldown_seconds`` ago — a *critical* verdict overrides the cooldown, never a running
retrain. Every alert is recorded in the ``alerts`` table beside the prediction log, with what was
done about it, so a suppressed alert is never lost.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from visionloop.config import Settings
from visionloop.store.database import ensure_schema, make_engine
from visionloop.store.schema import alerts_table

RETRAIN_STARTED = "retrain_started"
SUPPRESSED_COOLDOWN = "suppressed_cooldown"
SUPPRESSED_RUNNING = "suppressed_running"
ACTIONS = (RETRAIN_STARTED, SUPPRESSED_COOLDOWN, SUPPRESSED_RUNNING)


@dataclass
class AlertDecision:
    """What was done about one alert: whether it starts a retrain, and why (one of ``ACTIONS``)."""

    alert_id: str
    retrain: bool
    action: str
    reason: str


class AlertLog:
    """The ``alerts`` table: every drift alert, the decision taken on it and, for a retrain, its outcome."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        ensure_schema(self.engine)

    def decide(
        self,
        model_name: str,
        payload: dict[str, Any],
        cooldown_seconds: float,
        max_runtime_seconds: float,
        flow_run_id: str | None = None,
        now: datetime | None = None,
    ) -> AlertDecision:
        """Record the alert and whether it starts a retrain; atomic against a concurrent decision."""
        now = now or datetime.now(UTC)
        severity = str(payload.get("severity", "warning"))
        alert_id = str(uuid.uuid4())
        with self.engine.begin() as connection:
            # Serialise concurrent deciders: on SQLite the first write takes the database's write lock
            # until commit; on PostgreSQL an advisory lock per model does the same.
            if self.engine.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": model_name})
            connection.execute(alerts_table.insert().values(
                id=alert_id, created_at=now, model_name=model_name, severity=severity, action="deciding",
                reason="", payload=json.dumps(payload, default=str), flow_run_id=flow_run_id,
            ))
            last = connection.execute(
                sa.select(alerts_table)
                .where(alerts_table.c.model_name == model_name, alerts_table.c.action == RETRAIN_STARTED)
                .order_by(alerts_table.c.created_at.desc())
                .limit(1)
            ).first()
            running = last is not None and last.finished_at is None and (
                now - last.created_at < timedelta(seconds=max_runtime_seconds))  # else it died unfinished
            if running:
                action, reason = SUPPRESSED_RUNNING, f"a retrain (alert {last.id}) is still running"
            elif (last is not None and now - last.created_at < timedelta(seconds=cooldown_seconds)
                  and severity != "critical"):
                left = timedelta(seconds=cooldown_seconds) - (now - last.created_at)
                action = SUPPRESSED_COOLDOWN
                reason = (f"cooldown: last retrain started {last.created_at:%Y-%m-%d %H:%M:%S} UTC, "
                          f"{int(left.total_seconds())} s left")
            else:
                action = RETRAIN_STARTED
                overridden = last is not None and severity == "critical"
                reason = "critical drift overrides the cooldown" if overridden else "drift detected"
            connection.execute(alerts_table.update().where(alerts_table.c.id == alert_id)
                               .values(action=action, reason=reason))
        return AlertDecision(alert_id, action == RETRAIN_STARTED, action, reason)

    def finish(self, alert_id: str, outcome: str) -> None:
        """Close a retrain: its outcome, and the end of 'running' for the next decision."""
        with self.engine.begin() as connection:
            connection.execute(alerts_table.update().where(alerts_table.c.id == alert_id).values(
                finished_at=datetime.now(UTC), outcome=outcome))

    def history(self, model_name: str | None = None, limit: int = 100) -> pd.DataFrame:
        """The latest alerts (of one model, if given), newest first, one column per table column."""
        query = sa.select(alerts_table).order_by(alerts_table.c.created_at.desc()).limit(limit)
        if model_name:
            query = query.where(alerts_table.c.model_name == model_name)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return pd.DataFrame(rows, columns=[c.name for c in alerts_table.columns])


def decide_retrain(settings: Settings, payload: dict[str, Any], flow_run_id: str | None = None) -> AlertDecision:
    """The healing policy with the project's cooldown."""
    retrain = settings.params.retrain
    return AlertLog(settings.db_url).decide(
        settings.model_name, payload, retrain.cooldown_seconds, retrain.max_runtime_seconds, flow_run_id
    )
