"""The labeling queue: production images the rules (``labeling.rules``) picked, served to people one at a time.

States: ``queued`` → ``labeled`` | ``skipped`` | ``invalid``; ``capped`` rows (matched only rules
whose hourly cap was full) are never offered. Labeling is allowed from any state (a label is ground
truth, exactly like ``POST /feedback``); ``skip`` only from ``queued``; ``invalid`` from ``queued``
or ``skipped``; ``requeue`` brings ``skipped``, ``invalid`` or ``capped`` rows back. A label that
arrives through ``/feedback`` marks the row ``labeled`` too.

An image shown to one labeler is held (a lease of ``lease_seconds``) so two people are not shown the
same image. An action that names its labeler's session is refused (``LeaseLost``) when another
session holds the image now: its own lease ran out and someone else was given it. The
``label_queue`` table lives in the prediction log's database; ``labeling.scan`` fills it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from visionloop.data.ingest import class_sort_key
from visionloop.labeling.rules import REASONS, LabelingRules, Selection, select_for_queue, traffic_hour
from visionloop.store.schema import as_utc, label_queue_table, predictions_table

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from visionloop.contracts import PredictionRecord
    from visionloop.store.predlog import PredictionLog

QUEUED, LABELED, SKIPPED, INVALID, CAPPED = "queued", "labeled", "skipped", "invalid", "capped"
STATES: tuple[str, ...] = (QUEUED, LABELED, SKIPPED, INVALID, CAPPED)
# action → the states it may start from
TRANSITIONS: dict[str, frozenset[str]] = {
    "label": frozenset(STATES),
    "skip": frozenset({QUEUED}),
    "invalid": frozenset({QUEUED, SKIPPED}),
    "requeue": frozenset({SKIPPED, INVALID, CAPPED}),
    "undo": frozenset({LABELED, SKIPPED, INVALID}),  # the labeling page's "undo the last answer"
}


class QueueError(ValueError):
    """An action the item's state does not allow (e.g. skipping a labeled image)."""


class LeaseLost(QueueError):
    """The submitting session's lease ran out and another labeler holds the image now."""


class UnknownItem(KeyError):
    """No such prediction (in the log, or in the queue)."""


@dataclass
class QueueItem:
    """One queued image with its logged prediction."""

    prediction_id: str
    reason: str
    priority: float
    state: str
    enqueued_at: datetime
    drifted: bool
    prediction: PredictionRecord
    other_label: str | None = None  # what the model the disagreement rule compared with guessed
    other_version: str | None = None

    def top_guesses(self, k: int = 5) -> list[dict[str, Any]]:
        ranked = sorted(self.prediction.probabilities.items(), key=lambda item: -item[1])
        return [{"label": label, "probability": float(p)} for label, p in ranked[:k]]

    def to_dict(self) -> dict[str, Any]:
        p = self.prediction
        return {
            "prediction_id": self.prediction_id,
            "reason": self.reason,
            "priority": round(self.priority, 4),
            "state": self.state,
            "enqueued_at": self.enqueued_at.isoformat(),
            "drifted": self.drifted,
            "predicted_label": p.label,
            "confidence": float(p.confidence),
            "top_guesses": self.top_guesses(),
            "model_name": p.model_name,
            "model_version": p.model_version,
            "created_at": as_utc(p.created_at).isoformat(),
            "source": p.source,
            "has_image": bool(p.image_path),
            "feedback_label": p.feedback_label,
            "other_label": self.other_label,
            "other_version": self.other_version,
        }


class LabelQueue:
    """The ``label_queue`` table in the database of ``log``, filled by ``rules``."""

    def __init__(self, log: PredictionLog, rules: LabelingRules) -> None:
        self.log = log
        self.rules = rules
        self.engine = log.engine

    def ensure_schema(self) -> None:
        """The queue's tables share the log's schema: making sure of the log's makes sure of them."""
        self.log.ensure_schema()

    # -- filling (``labeling.scan``) --

    def present(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` already in the queue, in any state (a prediction is queued at most once)."""
        self.ensure_schema()
        found: set[str] = set()
        column = label_queue_table.c.prediction_id
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                found.update(connection.execute(sa.select(column).where(column.in_(chunk))).scalars())
        return found

    def admit(
        self, frame: pd.DataFrame, scores: pd.DataFrame, now: datetime, *,
        others: pd.Series | None = None, other_version: str | None = None,
    ) -> list[Selection]:
        """Queue the rules' pick of ``frame`` (scored by ``rule_scores``), counting what the hourly caps
        already hold, in one transaction; rows another scan inserted meanwhile are left as they are.
        ``others``, ``other_version``: the disagreeing model's guesses (``select_for_queue``)."""
        self.ensure_schema()
        t = label_queue_table.c
        first_hour = traffic_hour(frame["created_at"].min())
        already = sa.select(t.reason, t.predicted_at).where(t.predicted_at >= first_hour, t.state != CAPPED)
        with self.engine.begin() as connection:
            taken = Counter((reason, traffic_hour(at)) for reason, at in connection.execute(already))
            selections = select_for_queue(frame, scores, self.rules, taken, others=others,
                                          other_version=other_version)
            _insert_new(connection, [_queue_row(selection, now) for selection in selections])
        return selections

    # -- serving people --

    def sync_feedback(self, now: datetime | None = None) -> int:
        """Mark rows ``labeled`` whose prediction got a label some other way (``POST /feedback``)."""
        self.ensure_schema()
        t = label_queue_table.c
        has_label = sa.select(predictions_table.c.id).where(predictions_table.c.feedback_label.is_not(None))
        statement = (
            label_queue_table.update()
            .where(t.state.in_([QUEUED, SKIPPED, CAPPED]), t.prediction_id.in_(has_label))
            .values(state=LABELED, done_at=as_utc(now or datetime.now(UTC)), claimed_by=None, claimed_until=None)
        )
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount

    def next_item(self, claimant: str | None = None, now: datetime | None = None) -> QueueItem | None:
        """The highest-priority queued image nobody else holds; None when the queue is empty.

        With ``claimant`` (a labeler's session id) the item is held for ``lease_seconds`` so two
        people are not shown the same image; the same claimant gets its held item back first.
        """
        self.ensure_schema()
        now = as_utc(now or datetime.now(UTC))
        self.sync_feedback(now)
        for _attempt in range(5):
            row = self._claim_next(claimant, now)
            if row is None:
                return None
            if row is False:
                continue  # someone else took it between the read and the claim
            prediction = self.log.get(row.prediction_id)
            if prediction is None:  # the log lost the row: nothing to label
                self._set_state(row.prediction_id, INVALID, "invalid", now)
                continue
            return QueueItem(
                prediction_id=row.prediction_id,
                reason=row.reason,
                priority=float(row.priority),
                state=QUEUED,
                enqueued_at=row.enqueued_at,
                drifted=bool(row.drifted),
                prediction=prediction,
                other_label=row.other_label,
                other_version=row.other_version,
            )
        return None

    def _claim_next(self, claimant: str | None, now: datetime) -> sa.Row[Any] | Literal[False] | None:
        """The next row for ``claimant`` (claimed for it), None when none is free, False when it lost a race."""
        t = label_queue_table.c
        base = sa.select(label_queue_table).where(t.state == QUEUED)
        order = (t.priority.desc(), t.enqueued_at, t.prediction_id)
        free = sa.or_(t.claimed_until.is_(None), t.claimed_until <= now)
        with self.engine.begin() as connection:
            row = None
            if claimant:
                held = base.where(t.claimed_by == claimant, t.claimed_until > now)
                row = connection.execute(held.order_by(*order).limit(1)).first()
            if row is None:
                row = connection.execute(base.where(free).order_by(*order).limit(1)).first()
            if row is None or not claimant:
                return row
            claimed = connection.execute(
                label_queue_table.update()
                .where(t.prediction_id == row.prediction_id, t.state == QUEUED, sa.or_(free, t.claimed_by == claimant))
                .values(claimed_by=claimant, claimed_until=now + timedelta(seconds=self.rules.params.lease_seconds))
            ).rowcount
        return row if claimed else False

    def get(self, prediction_id: str) -> dict[str, Any] | None:
        """The queue row of a prediction, or None."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(label_queue_table).where(label_queue_table.c.prediction_id == prediction_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def submit_label(
        self,
        prediction_id: str,
        label: str,
        classes: Sequence[str] | None = None,
        now: datetime | None = None,
        session: str | None = None,
    ) -> bool:
        """Store the label exactly like ``POST /feedback`` (``PredictionLog.add_feedback``), then mark the
        queue row ``labeled``. True when the prediction was in the queue.

        Raises ``UnknownItem`` when the log has no such prediction, ``ValueError`` when ``classes`` is
        given and the label is not one of them, ``LeaseLost`` when ``session`` no longer holds the image.
        """
        if classes is not None and label not in classes:
            raise ValueError(f"label {label!r} is not one of the model's classes {list(classes)}")
        self.ensure_schema()
        now = as_utc(now or datetime.now(UTC))
        with self.engine.connect() as connection:
            _check_lease(connection, prediction_id, session, now)
        if not self.log.add_feedback(prediction_id, label, at=now):
            raise UnknownItem(f"no prediction with id {prediction_id!r}")
        t = label_queue_table.c
        with self.engine.begin() as connection:
            updated = connection.execute(
                label_queue_table.update()
                .where(t.prediction_id == prediction_id)
                .values(state=LABELED, done_at=now, claimed_by=None, claimed_until=None)
            ).rowcount
        return updated > 0

    def skip(self, prediction_id: str, now: datetime | None = None, session: str | None = None) -> None:
        """Pass on an image (a person was unsure); it is not offered again unless requeued."""
        self._set_state(prediction_id, SKIPPED, "skip", now, session)

    def mark_invalid(self, prediction_id: str, now: datetime | None = None, session: str | None = None) -> None:
        """Not a valid image for this task (blank, wrong subject…): never offered again, not trained on."""
        self._set_state(prediction_id, INVALID, "invalid", now, session)

    def requeue(self, prediction_id: str) -> None:
        """Offer a skipped, invalid or capped image again."""
        self._set_state(prediction_id, QUEUED, "requeue", None)

    def undo(self, prediction_id: str, session: str | None = None) -> None:
        """Take back a person's last answer: the image is queued again and, for a label, the label leaves the
        log too (else ``sync_feedback`` would mark it labeled again). ``session`` gets the image next."""
        self._set_state(prediction_id, QUEUED, "undo", None)
        with self.engine.begin() as connection:
            connection.execute(
                predictions_table.update()
                .where(predictions_table.c.id == prediction_id)
                .values(feedback_label=None, feedback_at=None)
            )
            if session:
                until = datetime.now(UTC) + timedelta(seconds=self.rules.params.lease_seconds)
                connection.execute(
                    label_queue_table.update()
                    .where(label_queue_table.c.prediction_id == prediction_id, label_queue_table.c.state == QUEUED)
                    .values(claimed_by=session, claimed_until=until)
                )

    def _set_state(
        self, prediction_id: str, state: str, action: str, now: datetime | None, session: str | None = None
    ) -> None:
        self.ensure_schema()
        t = label_queue_table.c
        allowed = TRANSITIONS[action]
        now = as_utc(now or datetime.now(UTC))
        done_at = None if state == QUEUED else now
        with self.engine.begin() as connection:
            current = connection.execute(sa.select(t.state).where(t.prediction_id == prediction_id)).scalar()
            if current is None:
                raise UnknownItem(f"prediction {prediction_id!r} is not in the labeling queue")
            _check_lease(connection, prediction_id, session, now)
            if current not in allowed:
                raise QueueError(f"cannot {action} an item that is {current} (allowed from: {sorted(allowed)})")
            connection.execute(
                label_queue_table.update()
                .where(t.prediction_id == prediction_id, t.state == current)
                .values(state=state, done_at=done_at, claimed_by=None, claimed_until=None)
            )

    # -- what people see --

    def progress(self) -> dict[str, Any]:
        """Counts per state and reason, queued images per predicted class, and the labeled share of
        drifted traffic (predictions that matched the drift rule, capped ones included)."""
        self.ensure_schema()
        self.sync_feedback()
        t = label_queue_table.c
        p = predictions_table.c
        joined = label_queue_table.join(predictions_table, p.id == t.prediction_id)
        with self.engine.connect() as connection:
            by_state_reason = connection.execute(
                sa.select(t.state, t.reason, sa.func.count()).group_by(t.state, t.reason)
            ).all()
            per_class = connection.execute(
                sa.select(p.label, sa.func.count()).select_from(joined).where(t.state == QUEUED).group_by(p.label)
            ).all()
            drifted = sa.select(sa.func.count(), sa.func.count(p.feedback_label)).select_from(joined)
            drifted_total, drifted_labeled = connection.execute(drifted.where(t.drifted.is_(True))).one()
            labeled_total = connection.execute(
                sa.select(sa.func.count()).select_from(predictions_table).where(p.feedback_label.is_not(None))
            ).scalar_one()
        states = dict.fromkeys(STATES, 0)
        per_reason: dict[str, dict[str, int]] = {r: dict.fromkeys(STATES, 0) for r in REASONS}
        for state, reason, count in by_state_reason:
            states[state] = states.get(state, 0) + int(count)
            per_reason.setdefault(reason, dict.fromkeys(STATES, 0))[state] = int(count)
        queued_per_class = {str(k): int(v) for k, v in sorted(per_class, key=lambda kv: class_sort_key(str(kv[0])))}
        return {
            "labeled": states[LABELED],
            "queued": states[QUEUED],
            "skipped": states[SKIPPED],
            "invalid": states[INVALID],
            "capped": states[CAPPED],
            "queued_per_class": queued_per_class,
            "per_reason": per_reason,
            "labeled_total": int(labeled_total),
            "drifted_traffic": {
                "total": int(drifted_total),
                "labeled": int(drifted_labeled),
                "labeled_share": (drifted_labeled / drifted_total) if drifted_total else None,
            },
        }


def _check_lease(connection: Connection, prediction_id: str, session: str | None, now: datetime) -> None:
    """Raise ``LeaseLost`` when ``session`` is given and another session holds ``prediction_id`` at ``now``.

    Without a session (an API client, ``/feedback``) a label is ground truth from anyone, as before.
    """
    if not session:
        return
    t = label_queue_table.c
    row = connection.execute(sa.select(t.claimed_by, t.claimed_until).where(t.prediction_id == prediction_id)).first()
    if row is None or row.claimed_by in (None, session) or row.claimed_until is None:
        return
    if as_utc(row.claimed_until) > now:
        raise LeaseLost(f"prediction {prediction_id!r} is held by another labeler now (this session's lease ran "
                        "out); load the next image")


def _queue_row(selection: Selection, now: datetime) -> dict[str, Any]:
    """The ``label_queue`` row of one of the rules' selections, enqueued at ``now``."""
    return {
        "prediction_id": selection.prediction_id,
        "reason": selection.reason,
        "priority": selection.priority,
        "enqueued_at": now,
        "state": CAPPED if selection.capped else QUEUED,
        "done_at": None,
        "predicted_at": selection.predicted_at,
        "drifted": selection.drifted,
        "claimed_by": None,
        "claimed_until": None,
        "other_label": selection.other_label,
        "other_version": selection.other_version,
    }


def _insert_new(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert queue rows, ignoring ones another scan inserted meanwhile."""
    if not rows:
        return
    dialects = {"sqlite": sqlite, "postgresql": postgresql}
    if dialect := dialects.get(connection.dialect.name):
        insert = dialect.insert(label_queue_table).on_conflict_do_nothing(index_elements=["prediction_id"])
        connection.execute(insert, rows)
        return
    for row in rows:
        try:
            with connection.begin_nested():
                connection.execute(label_queue_table.insert(), [row])
        except sa.exc.IntegrityError:
            continue
