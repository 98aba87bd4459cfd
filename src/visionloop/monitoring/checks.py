"""The monitor's memory: what the prediction log held for a version when it was last checked.

The scheduled monitor runs every few minutes whether or not traffic came in. Judging the same window twice
would log a duplicate MLflow run and Evidently snapshot and raise (or suppress) the same alert again, so each
completed check records the log's *watermark* for the watched version — how many predictions it has, the
newest one's time, the newest feedback label's time — and a check that finds the same watermark does nothing
but say so. A new prediction (even one the log writer stored late, with an older time: the count changes) or a
new feedback label (performance can be judged anew) makes the next check a real one. A check of one video
stream's rows (``stream_id``: ``visionloop monitor --stream ID``) has a watermark of its own, counted over that
stream's rows, so it neither hides nor repeats a check of the whole version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from visionloop.store.database import ensure_schema, make_engine
from visionloop.store.schema import monitor_checks_table, predictions_table

STALE = "no_new_data"


@dataclass(frozen=True)
class Watermark:
    """How far the log reached for one version: its number of predictions, their newest time, the newest label."""

    n_predictions: int
    newest_prediction_at: datetime | None
    newest_feedback_at: datetime | None


class CheckLog:
    """The ``monitor_checks`` table beside the prediction log."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        ensure_schema(self.engine)

    def watermark(self, model_name: str, model_version: str, stream_id: str | None = None) -> Watermark:
        """The log's watermark for this version now (only ``stream_id``'s rows, when given)."""
        p = predictions_table.c
        query = sa.select(sa.func.count(), sa.func.max(p.created_at), sa.func.max(p.feedback_at)).where(
            p.model_name == model_name, p.model_version == model_version)
        if stream_id is not None:
            query = query.where(p.stream_id == stream_id)
        with self.engine.connect() as connection:
            count, newest, feedback = connection.execute(query).one()
        # Aggregates come back untyped (naive on SQLite): through the column type, as every read of a time.
        as_time = predictions_table.c.created_at.type.process_result_value
        return Watermark(int(count), as_time(newest, self.engine.dialect), as_time(feedback, self.engine.dialect))

    def last(self, model_name: str, model_version: str, stream_id: str | None = None) -> Watermark | None:
        """The watermark of the last completed check of this version (of its ``stream_id`` rows, or of all of
        them), or None when it was never checked."""
        c = monitor_checks_table.c
        scope = c.stream_id.is_(None) if stream_id is None else c.stream_id == stream_id
        query = (sa.select(c.n_predictions, c.newest_prediction_at, c.newest_feedback_at)
                 .where(c.model_name == model_name, c.model_version == model_version, scope)
                 .order_by(c.id.desc()).limit(1))
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else Watermark(*row)

    def last_checked_at(self, model_name: str) -> datetime | None:
        """When the last completed check of any version of the model ended (None: never checked)."""
        c = monitor_checks_table.c
        query = sa.select(c.checked_at).where(c.model_name == model_name).order_by(c.id.desc()).limit(1)
        with self.engine.connect() as connection:
            return connection.execute(query).scalar_one_or_none()

    def record(self, model_name: str, model_version: str, mark: Watermark, status: str,
               mlflow_run_id: str | None = None, stream_id: str | None = None) -> None:
        """Remember a completed check and the watermark it judged."""
        with self.engine.begin() as connection:
            connection.execute(monitor_checks_table.insert().values(
                checked_at=datetime.now(UTC), model_name=model_name, model_version=model_version,
                n_predictions=mark.n_predictions, newest_prediction_at=mark.newest_prediction_at,
                newest_feedback_at=mark.newest_feedback_at, status=status, mlflow_run_id=mlflow_run_id,
                stream_id=stream_id))

    def dispose(self) -> None:
        self.engine.dispose()


def nothing_new(
    url: str, model_name: str, model_version: str, stream_id: str | None = None
) -> tuple[Watermark, bool]:
    """The version's watermark now (of one stream's rows, when given), and whether the last check of the same
    scope already judged exactly that."""
    log = CheckLog(url)
    try:
        mark = log.watermark(model_name, model_version, stream_id)
        return mark, mark == log.last(model_name, model_version, stream_id)
    finally:
        log.dispose()


def previous_check_at(url: str, model_name: str) -> datetime | None:
    """``CheckLog.last_checked_at``: the report page says how long after the previous check this one ran."""
    log = CheckLog(url)
    try:
        return log.last_checked_at(model_name)
    finally:
        log.dispose()


def record_check(url: str, model_name: str, model_version: str, mark: Watermark, status: str,
                 mlflow_run_id: str | None = None, stream_id: str | None = None) -> None:
    """``CheckLog.record`` for one completed check (of one stream's rows, when ``stream_id`` is given)."""
    log = CheckLog(url)
    try:
        log.record(model_name, model_version, mark, status, mlflow_run_id, stream_id)
    finally:
        log.dispose()
