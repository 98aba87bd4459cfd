"""Every table of the project's database, in one SQLAlchemy metadata (migrated by Alembic).

The prediction log, the labeling queue and its scans, label-review decisions, drift alerts and the monitor's
checks live
in one database (``Settings.db_url``). Modules import their tables from here; the schema changes only
through a migration under ``visionloop/store/migrations``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

PREDICTIONS = "predictions"
LABEL_QUEUE = "label_queue"
LABEL_QUEUE_SCANS = "label_queue_scans"
LABEL_REVIEW = "label_review"
ALERTS = "alerts"
MONITOR_CHECKS = "monitor_checks"
SHADOW_PREDICTIONS = "shadow_predictions"


class UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


metadata = sa.MetaData()


def event_columns() -> list[sa.Column]:
    """The key of a logged event (a prediction, an alert): its id, when it happened and which model it concerns."""
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("model_name", sa.String(200), nullable=False),
    ]


predictions_table = sa.Table(
    PREDICTIONS,
    metadata,
    *event_columns(),
    sa.Column("model_version", sa.String(64), nullable=False, index=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("probabilities", sa.Text, nullable=False),  # JSON {class: p}
    sa.Column("features", sa.Text, nullable=False),  # JSON {feature: value}
    sa.Column("image_path", sa.Text, nullable=True),
    sa.Column("source", sa.String(32), nullable=False, default="rest"),
    sa.Column("feedback_label", sa.String(200), nullable=True),
    sa.Column("feedback_at", UTCDateTime(), nullable=True),
    sa.Column("stream_id", sa.String(200), nullable=True),  # a streamed frame's stream (REST/batch rows: empty)
    sa.Column("frame_ts", sa.Float, nullable=True),  # the frame's timestamp in its stream, seconds
    sa.Index("ix_predictions_stream", "stream_id", "created_at"),  # the monitor's per-stream window
)

label_queue_table = sa.Table(
    LABEL_QUEUE,
    metadata,
    sa.Column("prediction_id", sa.String(36), primary_key=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("priority", sa.Float, nullable=False),
    sa.Column("enqueued_at", UTCDateTime(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("done_at", UTCDateTime(), nullable=True),
    sa.Column("predicted_at", UTCDateTime(), nullable=False, index=True),  # caps count per hour of traffic
    sa.Column("drifted", sa.Boolean, nullable=False, default=False),  # matched the drift rule when scanned
    sa.Column("claimed_by", sa.String(64), nullable=True),  # a labeler's session holding the item
    sa.Column("claimed_until", UTCDateTime(), nullable=True),
    sa.Column("other_label", sa.String(200), nullable=True),  # where the disagreement rule fired: the other
    sa.Column("other_version", sa.String(64), nullable=True),  # model's top guess and version (previous champion)
)
label_scans_table = sa.Table(
    LABEL_QUEUE_SCANS,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scanned_at", UTCDateTime(), nullable=False),
    sa.Column("through", UTCDateTime(), nullable=True),  # newest prediction time examined
    sa.Column("examined", sa.Integer, nullable=False),
    sa.Column("result", sa.Text, nullable=False),  # JSON EnqueueResult
)

label_review_table = sa.Table(
    LABEL_REVIEW,
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),  # canonical pixels (data.pixel_sha256)
    sa.Column("path", sa.Text, nullable=False),  # in the prepared data, when decided
    sa.Column("given_label", sa.String(200), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # confirmed | corrected
    sa.Column("new_label", sa.String(200), nullable=True),
    sa.Column("model_version", sa.String(64), nullable=True),  # the version that disputed the label
    sa.Column("decided_at", UTCDateTime(), nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=True),
    sa.Column("snapshot", sa.Text, nullable=True),  # the snapshot folder that carries the correction
    sa.Column("data_version", sa.String(64), nullable=True),
)

alerts_table = sa.Table(
    ALERTS,
    metadata,
    *event_columns(),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),  # see ACTIONS
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the drift verdict summary (contracts.DriftVerdict.summary)
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),  # promoted v3 / refused: … / failed: …
)

# One row per completed monitor check: what the log held for the watched version when it was judged, so that a
# check finding nothing new since the last one does nothing (visionloop.monitoring.checks).
monitor_checks_table = sa.Table(
    MONITOR_CHECKS,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("checked_at", UTCDateTime(), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("n_predictions", sa.Integer, nullable=False),  # the version's predictions in the log
    sa.Column("newest_prediction_at", UTCDateTime(), nullable=True),
    sa.Column("newest_feedback_at", UTCDateTime(), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),  # monitoring.monitor.Status
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("stream_id", sa.String(200), nullable=True),  # a check of one stream's rows (empty: all of them)
    sa.Index("ix_monitor_checks_model", "model_name", "model_version"),
)

# One row per image a challenger predicted in the shadow of the champion's answer (visionloop.serving.shadow): the
# champion's prediction id (its row in ``predictions``, where feedback labels arrive), both answers and their cost.
shadow_predictions_table = sa.Table(
    SHADOW_PREDICTIONS,
    metadata,
    *event_columns(),  # id: the champion's prediction id; created_at: when the champion answered
    sa.Column("champion_version", sa.String(64), nullable=False),
    sa.Column("champion_label", sa.String(200), nullable=False),
    sa.Column("champion_confidence", sa.Float, nullable=False),
    sa.Column("challenger_version", sa.String(64), nullable=False),
    sa.Column("challenger_label", sa.String(200), nullable=False),
    sa.Column("challenger_confidence", sa.Float, nullable=False),
    sa.Column("champion_ms", sa.Float, nullable=False),  # forward time per image of the champion's batch
    sa.Column("challenger_ms", sa.Float, nullable=False),  # ... and of the challenger's
    sa.Column("features", sa.Text, nullable=False),  # JSON: the challenger's reduced embedding and probabilities
    sa.Column("source", sa.String(32), nullable=False),  # rest | batch
    sa.Index("ix_shadow_versions", "challenger_version", "champion_version", "created_at"),
)
