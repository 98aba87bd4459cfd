"""The labeling queue: production images sampled for people to label, beside the prediction log.

Retraining needs labels, and people's time is the scarce part, so images are sampled by rules that
pick what teaches the model most (``labeling:`` in params.yaml):

==================  ==================================================================  ===============
reason              an image is sampled when                                            score (0..1)
==================  ==================================================================  ===============
``disagreement``    a previous model version's top guess differs from the logged one    total-variation
                                                                                        distance of the
                                                                                        two outputs
``drift``           one of the drifted features lies outside the reference profile's    how far outside,
                    ``[q, 1-q]`` quantile range (``drift.quantile``)                    in ranges
``low_confidence``  the top-1 confidence is below ``low_confidence.threshold``          (t - conf) / t
``random``          a hash of the prediction id falls below ``random.rate``             0
==================  ==================================================================  ===============

Each rule has a **per-hour cap** (``cap_per_hour``, null = none) counted per hour of *traffic* (the
prediction's time), so a burst of drifted traffic or a backfill of a day's log cannot flood the
queue. An image that matches several rules is queued under the one with the highest ``weight``
whose cap has room; one that matches only full rules is kept as ``capped`` (not offered, but
counted — e.g. in the labeled share of drifted traffic). ``priority = weight + score``; people see
the highest priority first.

Every rule is a deterministic function of the prediction (the random rule hashes its id), so a
scan can safely look again at the last ``scan_overlap_seconds`` — rows the background log writer
stored late are not missed, and nothing is sampled twice.

States: ``queued`` → ``labeled`` | ``skipped`` | ``invalid``; ``capped`` rows are never offered.
Labeling is allowed from any state (a label is ground truth, exactly like ``POST /feedback``);
``skip`` only from ``queued``; ``invalid`` from ``queued`` or ``skipped``; ``requeue`` brings
``skipped``, ``invalid`` or ``capped`` rows back. A label that arrives through ``/feedback`` marks
the row ``labeled`` too.

The tables (``label_queue``, ``label_queue_scans``) live in the prediction log's database and are
created when missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from visionloop.contracts import PredictionRecord
from visionloop.monitoring.features import PROBABILITY_PREFIX
from visionloop.store.predlog import PredictionLog
from visionloop.store.schema import PREDICTIONS, as_utc, label_queue_table, label_scans_table, metadata

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel

log = logging.getLogger(__name__)

DISAGREEMENT, DRIFT, LOW_CONFIDENCE, RANDOM = "disagreement", "drift", "low_confidence", "random"
REASONS: tuple[str, ...] = (DISAGREEMENT, DRIFT, LOW_CONFIDENCE, RANDOM)
DEFAULT_WEIGHTS = {DISAGREEMENT: 3.0, DRIFT: 2.0, LOW_CONFIDENCE: 1.0, RANDOM: 0.0}

QUEUED, LABELED, SKIPPED, INVALID, CAPPED = "queued", "labeled", "skipped", "invalid", "capped"
STATES: tuple[str, ...] = (QUEUED, LABELED, SKIPPED, INVALID, CAPPED)
# action → the states it may start from
TRANSITIONS: dict[str, frozenset[str]] = {
    "label": frozenset(STATES),
    "skip": frozenset({QUEUED}),
    "invalid": frozenset({QUEUED, SKIPPED}),
    "requeue": frozenset({SKIPPED, INVALID, CAPPED}),
}

# The columns of the prediction log this module reads (its documented schema), without its Python objects.
_predictions = sa.table(
    PREDICTIONS, sa.column("id"), sa.column("label"), sa.column("feedback_label"), sa.column("created_at")
)


class QueueError(ValueError):
    """An action the item's state does not allow (e.g. skipping a labeled image)."""


class UnknownItem(KeyError):
    """No such prediction (in the log, or in the queue)."""


# --- the rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelingRules:
    """The sampling rules of ``labeling:`` in params.yaml."""

    low_confidence_threshold: float = 0.6
    drift_quantile: float = 0.01
    random_rate: float = 0.02
    caps: Mapping[str, int | None] = field(default_factory=lambda: dict.fromkeys(REASONS))
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    seed: int = 42
    scan_overlap_seconds: float = 600.0
    lease_seconds: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelingRules:
        cfg = settings.section("labeling")
        rule = {reason: cfg.get(reason) or {} for reason in REASONS}
        default = cls()
        caps = {r: (None if rule[r].get("cap_per_hour") is None else int(rule[r]["cap_per_hour"])) for r in REASONS}
        return cls(
            low_confidence_threshold=float(rule[LOW_CONFIDENCE].get("threshold", default.low_confidence_threshold)),
            drift_quantile=float(rule[DRIFT].get("quantile", default.drift_quantile)),
            random_rate=float(rule[RANDOM].get("rate", default.random_rate)),
            caps=caps,
            weights={r: float(rule[r].get("weight", DEFAULT_WEIGHTS[r])) for r in REASONS},
            seed=settings.seed,
            scan_overlap_seconds=float(cfg.get("scan_overlap_seconds", default.scan_overlap_seconds)),
            lease_seconds=float(cfg.get("lease_seconds", default.lease_seconds)),
        )


def low_confidence_scores(frame: pd.DataFrame, threshold: float) -> pd.Series:
    """(threshold - confidence) / threshold where the top-1 confidence is below ``threshold``, else NaN."""
    confidence = frame["confidence"].astype(float)
    return ((threshold - confidence) / threshold).where(confidence < threshold)


def _probabilities(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in frame.columns if c.startswith(PROBABILITY_PREFIX)]
    probabilities = frame[columns].astype(float).fillna(0.0)
    probabilities.columns = [c[len(PROBABILITY_PREFIX) :] for c in columns]
    return probabilities


def disagreement_scores(frame: pd.DataFrame, previous: pd.DataFrame) -> pd.Series:
    """Total-variation distance between the logged and the previous version's outputs, where their
    top guesses differ; NaN elsewhere (and where ``previous`` has no row).

    ``previous``: index = prediction id, columns = class names, values = the previous version's
    probabilities for that prediction's image (``previous_model_probabilities``).
    """
    if previous.empty or frame.empty:
        return pd.Series(np.nan, index=frame.index)
    current = _probabilities(frame)
    classes = list(dict.fromkeys([*current.columns, *previous.columns]))
    prior = previous.reindex(frame["id"].to_numpy())
    known = prior.notna().any(axis=1).to_numpy()
    prior_values = prior.reindex(columns=classes).fillna(0.0).to_numpy()
    current_values = current.reindex(columns=classes).fillna(0.0).to_numpy()
    distance = 0.5 * np.abs(current_values - prior_values).sum(axis=1)
    prior_top = np.asarray(classes, dtype=object)[prior_values.argmax(axis=1)]
    differs = known & (prior_top != frame["label"].astype(str).to_numpy())
    return pd.Series(np.where(differs, distance, np.nan), index=frame.index)


def drift_scores(
    frame: pd.DataFrame, drifted_features: Sequence[str], reference: pd.DataFrame, quantile: float
) -> pd.Series:
    """Where a drifted numeric feature lies outside the reference's ``[quantile, 1 - quantile]`` range:
    ``d / (1 + d)`` with ``d`` the largest distance outside, in units of that range's width; else NaN.

    Features that are not numeric in both frames (e.g. ``pred_label``) are ignored.
    """
    if not 0 <= quantile < 0.5:
        raise ValueError(f"drift quantile must be in [0, 0.5), got {quantile}")
    best = pd.Series(np.nan, index=frame.index)
    for feature in drifted_features:
        if feature not in frame.columns or feature not in reference.columns:
            continue
        if not (pd.api.types.is_numeric_dtype(reference[feature]) and pd.api.types.is_numeric_dtype(frame[feature])):
            continue
        values = reference[feature].astype(float).replace([np.inf, -np.inf], np.nan).dropna()
        if values.empty:
            continue
        low, high = float(values.quantile(quantile)), float(values.quantile(1 - quantile))
        width = high - low or float(values.std()) or 1.0
        current = frame[feature].astype(float)
        outside = np.maximum(low - current, current - high) / width
        score = (outside / (1 + outside)).where((current < low) | (current > high))
        best = pd.Series(np.fmax(best.to_numpy(), score.to_numpy()), index=frame.index)
    return best


def uniform_from_id(prediction_id: str, seed: int) -> float:
    """A reproducible uniform number in [0, 1) from a prediction id (the random rule's coin)."""
    digest = hashlib.sha256(f"{seed}:{prediction_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def random_scores(frame: pd.DataFrame, rate: float, seed: int) -> pd.Series:
    """0.0 for the share ``rate`` of predictions whose id hashes low, NaN for the rest."""
    coins = np.array([uniform_from_id(str(i), seed) for i in frame["id"]], dtype=float)
    return pd.Series(np.where(coins < rate, 0.0, np.nan), index=frame.index)


def rule_scores(
    frame: pd.DataFrame,
    rules: LabelingRules,
    *,
    previous_probabilities: pd.DataFrame | None = None,
    drifted_features: Sequence[str] | None = None,
    reference: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One column per reason (``REASONS``): the rule's score where it matches, NaN where it does not.

    Disagreement needs ``previous_probabilities``; drift needs ``drifted_features`` and the
    ``reference`` profile. Without them those rules match nothing.
    """
    nothing = pd.Series(np.nan, index=frame.index)
    scores = {
        DISAGREEMENT: nothing
        if previous_probabilities is None
        else disagreement_scores(frame, previous_probabilities),
        DRIFT: nothing
        if not drifted_features or reference is None
        else drift_scores(frame, drifted_features, reference, rules.drift_quantile),
        LOW_CONFIDENCE: low_confidence_scores(frame, rules.low_confidence_threshold),
        RANDOM: random_scores(frame, rules.random_rate, rules.seed),
    }
    return pd.DataFrame(scores, index=frame.index, columns=list(REASONS))


def traffic_hour(moment: datetime | pd.Timestamp) -> datetime:
    """The UTC hour a prediction belongs to, for the per-hour caps."""
    return as_utc(pd.Timestamp(moment).to_pydatetime()).replace(minute=0, second=0, microsecond=0)


def select_for_queue(
    frame: pd.DataFrame, scores: pd.DataFrame, rules: LabelingRules, taken: Counter, now: datetime
) -> list[dict[str, Any]]:
    """Queue rows for the matched predictions, filling each rule's hourly cap best-first.

    ``taken`` counts (reason, traffic hour) already offered; it is updated. Predictions are taken in
    order of their best priority, and each goes to its highest-weight rule with room left.
    """
    rows = []
    order = sorted(REASONS, key=lambda r: -rules.weights[r])
    matched = scores.notna().any(axis=1)
    best = pd.Series(-np.inf, index=frame.index)
    for reason in REASONS:
        best = np.maximum(best, (scores[reason] + rules.weights[reason]).fillna(-np.inf))
    for position in best[matched].sort_values(ascending=False, kind="stable").index:
        row = frame.loc[position]
        hour = traffic_hour(row["created_at"])
        reasons = [r for r in order if not math.isnan(scores.at[position, r])]
        chosen = next(
            (r for r in reasons if rules.caps.get(r) is None or taken[(r, hour)] < int(rules.caps[r])), None
        )
        reason = chosen or reasons[0]
        if chosen:
            taken[(chosen, hour)] += 1
        rows.append(
            {
                "prediction_id": str(row["id"]),
                "reason": reason,
                "priority": float(rules.weights[reason] + scores.at[position, reason]),
                "enqueued_at": now,
                "state": QUEUED if chosen else CAPPED,
                "done_at": None,
                "predicted_at": as_utc(pd.Timestamp(row["created_at"]).to_pydatetime()),
                "drifted": not math.isnan(scores.at[position, DRIFT]),
                "claimed_by": None,
                "claimed_until": None,
            }
        )
    return rows


def previous_model_probabilities(frame: pd.DataFrame, model: ServableModel) -> pd.DataFrame:
    """The previous version's probabilities for the stored images of ``frame`` (index = prediction id).

    Rows answered by that same version, and rows whose image is missing or unreadable, are left out.
    """
    from visionloop.data.ingest import load_image
    from visionloop.monitoring.features import predict_in_chunks

    ids, images = [], []
    for prediction_id, path, version in zip(frame["id"], frame["image_path"], frame["model_version"], strict=True):
        if not path or str(version) == str(model.version):
            continue
        try:
            images.append(load_image(path))
        except Exception as error:  # noqa: BLE001 - a lost image costs its row, not the scan
            log.debug("image of %s unreadable: %s", prediction_id, error)
            continue
        ids.append(str(prediction_id))
    if not ids:
        return pd.DataFrame(columns=list(model.classes), dtype=float)
    probabilities = predict_in_chunks(model, images).probabilities
    return pd.DataFrame(probabilities, index=ids, columns=list(model.classes))


# --- the queue ---------------------------------------------------------------------------------------


@dataclass
class EnqueueResult:
    examined: int = 0
    queued: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    capped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    drifted: int = 0  # examined predictions that matched the drift rule
    through: datetime | None = None  # newest prediction time examined

    @property
    def total_queued(self) -> int:
        return sum(self.queued.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "queued": dict(self.queued),
            "capped": dict(self.capped),
            "drifted": self.drifted,
            "total_queued": self.total_queued,
            "through": None if self.through is None else self.through.isoformat(),
        }


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
        }


class LabelQueue:
    """The ``label_queue`` table in the database of ``log`` (created when missing)."""

    def __init__(self, log: PredictionLog, rules: LabelingRules | None = None) -> None:
        self.log = log
        self.rules = rules or LabelingRules()
        self.engine = log.engine
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def ensure_schema(self) -> None:
        """Create the queue tables (and the log's) if missing; once per process and queue."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self.log.ensure_schema()
                metadata.create_all(self.engine)
                self._schema_ready = True

    # -- filling --

    def enqueue_frame(
        self,
        frame: pd.DataFrame,
        *,
        previous_probabilities: pd.DataFrame | None = None,
        drifted_features: Sequence[str] | None = None,
        reference: pd.DataFrame | None = None,
        now: datetime | None = None,
    ) -> EnqueueResult:
        """Apply the rules to predictions (a ``PredictionLog.read_window`` frame) not yet in the queue."""
        self.ensure_schema()
        now = as_utc(now or datetime.now(UTC))
        result = EnqueueResult()
        if frame.empty:
            return result
        with self.engine.connect() as connection:
            present = self._present(connection, frame["id"].astype(str).tolist())
        frame = frame[~frame["id"].astype(str).isin(present)]
        result.examined = len(frame)
        if frame.empty:
            return result
        result.through = as_utc(pd.Timestamp(frame["created_at"].max()).to_pydatetime())
        scores = rule_scores(
            frame,
            self.rules,
            previous_probabilities=previous_probabilities,
            drifted_features=drifted_features,
            reference=reference,
        )
        result.drifted = int(scores[DRIFT].notna().sum())
        first_hour = traffic_hour(frame["created_at"].min())
        with self.engine.begin() as connection:
            taken = self._taken(connection, first_hour)
            rows = select_for_queue(frame, scores, self.rules, taken, now)
            _insert_new(connection, rows)
        for row in rows:
            (result.queued if row["state"] == QUEUED else result.capped)[row["reason"]] += 1
        return result

    def _present(self, connection: Connection, ids: list[str]) -> set[str]:
        present: set[str] = set()
        column = label_queue_table.c.prediction_id
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            present.update(connection.execute(sa.select(column).where(column.in_(chunk))).scalars())
        return present

    def _taken(self, connection: Connection, since_hour: datetime) -> Counter:
        t = label_queue_table.c
        query = sa.select(t.reason, t.predicted_at).where(t.predicted_at >= since_hour, t.state != CAPPED)
        return Counter((reason, traffic_hour(at)) for reason, at in connection.execute(query))

    def last_scan_through(self) -> datetime | None:
        """The newest prediction time any scan examined (where the next scan continues)."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.max(label_scans_table.c.through))).scalar_one_or_none()

    def record_scan(self, result: EnqueueResult, now: datetime | None = None) -> None:
        self.ensure_schema()
        with self.engine.begin() as connection:
            connection.execute(
                label_scans_table.insert(),
                [
                    {
                        "scanned_at": as_utc(now or datetime.now(UTC)),
                        "through": result.through,
                        "examined": result.examined,
                        "result": json.dumps(result.to_dict()),
                    }
                ],
            )

    # -- serving people --

    def sync_feedback(self, now: datetime | None = None) -> int:
        """Mark rows ``labeled`` whose prediction got a label some other way (``POST /feedback``)."""
        self.ensure_schema()
        t = label_queue_table.c
        has_label = sa.select(_predictions.c.id).where(_predictions.c.feedback_label.is_not(None))
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
        t = label_queue_table.c
        base = sa.select(label_queue_table).where(t.state == QUEUED)
        order = (t.priority.desc(), t.enqueued_at, t.prediction_id)
        for _attempt in range(5):
            with self.engine.begin() as connection:
                row = None
                if claimant:
                    row = connection.execute(
                        base.where(t.claimed_by == claimant, t.claimed_until > now).order_by(*order).limit(1)
                    ).first()
                if row is None:
                    free = sa.or_(t.claimed_until.is_(None), t.claimed_until <= now)
                    row = connection.execute(base.where(free).order_by(*order).limit(1)).first()
                if row is None:
                    return None
                if claimant:
                    claimed = connection.execute(
                        label_queue_table.update()
                        .where(
                            t.prediction_id == row.prediction_id,
                            t.state == QUEUED,
                            sa.or_(t.claimed_until.is_(None), t.claimed_until <= now, t.claimed_by == claimant),
                        )
                        .values(claimed_by=claimant, claimed_until=now + timedelta(seconds=self.rules.lease_seconds))
                    ).rowcount
                    if not claimed:
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
            )
        return None

    def get(self, prediction_id: str) -> dict[str, Any] | None:
        """The queue row of a prediction, or None."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(label_queue_table).where(label_queue_table.c.prediction_id == prediction_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def submit_label(
        self, prediction_id: str, label: str, classes: Sequence[str] | None = None, now: datetime | None = None
    ) -> bool:
        """Store the label exactly like ``POST /feedback`` (``PredictionLog.add_feedback``), then mark the
        queue row ``labeled``. True when the prediction was in the queue.

        Raises ``UnknownItem`` when the log has no such prediction, ``ValueError`` when ``classes`` is
        given and the label is not one of them.
        """
        if classes is not None and label not in classes:
            raise ValueError(f"label {label!r} is not one of the model's classes {list(classes)}")
        self.ensure_schema()
        now = as_utc(now or datetime.now(UTC))
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

    def skip(self, prediction_id: str, now: datetime | None = None) -> None:
        """Pass on an image (a person was unsure); it is not offered again unless requeued."""
        self._set_state(prediction_id, SKIPPED, "skip", now)

    def mark_invalid(self, prediction_id: str, now: datetime | None = None) -> None:
        """Not a valid image for this task (blank, wrong subject…): never offered again, not trained on."""
        self._set_state(prediction_id, INVALID, "invalid", now)

    def requeue(self, prediction_id: str) -> None:
        """Offer a skipped, invalid or capped image again."""
        self._set_state(prediction_id, QUEUED, "requeue", None)

    def _set_state(self, prediction_id: str, state: str, action: str, now: datetime | None) -> None:
        self.ensure_schema()
        t = label_queue_table.c
        allowed = TRANSITIONS[action]
        done_at = None if state == QUEUED else as_utc(now or datetime.now(UTC))
        with self.engine.begin() as connection:
            current = connection.execute(sa.select(t.state).where(t.prediction_id == prediction_id)).scalar()
            if current is None:
                raise UnknownItem(f"prediction {prediction_id!r} is not in the labeling queue")
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
        p = _predictions.c
        joined = label_queue_table.join(_predictions, p.id == t.prediction_id)
        with self.engine.connect() as connection:
            by_state_reason = connection.execute(
                sa.select(t.state, t.reason, sa.func.count()).group_by(t.state, t.reason)
            ).all()
            per_class = connection.execute(
                sa.select(p.label, sa.func.count()).select_from(joined).where(t.state == QUEUED).group_by(p.label)
            ).all()
            drifted_total, drifted_labeled = connection.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count(p.feedback_label),
                )
                .select_from(joined)
                .where(t.drifted.is_(True))
            ).one()
            labeled_total = connection.execute(
                sa.select(sa.func.count()).select_from(_predictions).where(p.feedback_label.is_not(None))
            ).scalar_one()
        states = dict.fromkeys(STATES, 0)
        per_reason: dict[str, dict[str, int]] = {r: dict.fromkeys(STATES, 0) for r in REASONS}
        for state, reason, count in by_state_reason:
            states[state] = states.get(state, 0) + int(count)
            per_reason.setdefault(reason, dict.fromkeys(STATES, 0))[state] = int(count)
        from visionloop.data.ingest import class_sort_key

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


def _insert_new(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert queue rows, ignoring ones another scan inserted meanwhile."""
    if not rows:
        return
    name = connection.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        connection.execute(insert(label_queue_table).on_conflict_do_nothing(index_elements=["prediction_id"]), rows)
        return
    for row in rows:
        try:
            with connection.begin_nested():
                connection.execute(label_queue_table.insert(), [row])
        except sa.exc.IntegrityError:
            continue


# --- one scan of the log -------------------------------------------------------------------------------


def enqueue_from_log(
    settings: Settings,
    log: PredictionLog,
    *,
    previous_model: ServableModel | None = None,
    previous_probabilities: pd.DataFrame | None = None,
    drifted_features: Sequence[str] | None = None,
    reference: pd.DataFrame | None = None,
    queue: LabelQueue | None = None,
    now: datetime | None = None,
) -> EnqueueResult:
    """Scan the predictions logged since the last scan (minus ``scan_overlap_seconds``) and queue what
    the rules pick.

    Disagreement: pass the previous version (``previous_model``; its outputs are computed on the
    stored images) or its outputs (``previous_probabilities``, index = prediction id, columns =
    classes). Drift: pass the drifted features (``DriftVerdict.drifted_features``) and the
    reference profile they were tested against.
    """
    queue = queue or LabelQueue(log, LabelingRules.from_settings(settings))
    through = queue.last_scan_through()
    since = None if through is None else through - timedelta(seconds=queue.rules.scan_overlap_seconds)
    frame = log.read_window(since=since)
    if previous_probabilities is None and previous_model is not None and not frame.empty:
        previous_probabilities = previous_model_probabilities(frame, previous_model)
    result = queue.enqueue_frame(
        frame,
        previous_probabilities=previous_probabilities,
        drifted_features=drifted_features,
        reference=reference,
        now=now,
    )
    if result.through is None and through is not None:
        result.through = through
    queue.record_scan(result, now)
    return result


@dataclass
class ScanInputs:
    """What ``enqueue_with_registry`` found to feed the disagreement and drift rules."""

    previous_version: str | None = None
    drifted_features: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def enqueue_with_registry(
    settings: Settings,
    log: PredictionLog | None = None,
    *,
    previous: str | None = None,
    drifted_features: Iterable[str] | None = None,
    champion: ServableModel | None = None,
    reference: pd.DataFrame | None = None,
) -> tuple[EnqueueResult, ScanInputs]:
    """One scan with inputs taken from the registry: the CLI's and the flows' entry point.

    * champion and its reference profile: ``champion`` and ``reference`` when the caller has them loaded
      (the monitor flow), else the registry's champion, downloaded here.

    * previous version: ``previous`` (a ``models:/`` URI or a version number), else the champion
      before the current one in the promotion history; none → no disagreement rule.
    * drifted features: ``drifted_features``, else a drift test (``drift.run_drift_tests``) of the
      latest ``monitoring.window`` predictions of the champion against its reference profile.
    """
    import tempfile
    from pathlib import Path

    from visionloop.contracts import BUNDLE_FILES, CHAMPION
    from visionloop.models.bundle import load_registered
    from visionloop.monitoring.drift import run_drift_tests
    from visionloop.monitoring.features import EMBEDDING_PREFIX, IMAGE_STAT_COLUMNS
    from visionloop.promotion.registry import champion_stack, history

    log = log or PredictionLog(settings.db_url)
    inputs = ScanInputs()
    name = settings.model_name
    with tempfile.TemporaryDirectory(prefix="visionloop-label-") as tmp:
        if champion is None:
            try:
                champion = load_registered(f"models:/{name}@{CHAMPION}", settings.tracking_uri, Path(tmp) / "champion")
            except Exception as error:  # noqa: BLE001 - no champion: low confidence and random still work
                inputs.notes.append(f"no champion ({str(error).splitlines()[0]}): drift rule off")
        previous_model = None
        if previous is not None:  # asked for: a failure to load it is an error
            uri = previous if previous.startswith("models:/") else f"models:/{name}/{previous}"
            previous_model = load_registered(uri, settings.tracking_uri, Path(tmp) / "previous")
        elif champion is not None:
            stack = [v for v in champion_stack(history(settings)) if v != str(champion.version)]
            if stack:
                try:
                    previous_model = load_registered(
                        f"models:/{name}/{stack[-1]}", settings.tracking_uri, Path(tmp) / "previous"
                    )
                except Exception as error:  # noqa: BLE001 - e.g. deleted since: the other rules still run
                    inputs.notes.append(f"previous champion v{stack[-1]} unavailable ({str(error).splitlines()[0]})")
        if previous_model is not None:
            inputs.previous_version = str(previous_model.version)
        else:
            inputs.notes.append("no previous champion: disagreement rule off")

        if reference is None and champion is not None:
            profile = Path(tmp) / "champion" / BUNDLE_FILES["reference_profile"]
            if profile.exists():
                reference = pd.read_parquet(profile)
        if drifted_features is not None:
            inputs.drifted_features = list(drifted_features)
        elif reference is not None and champion is not None:
            window = log.read_window(
                last_n=int(settings.section("monitoring").get("window", 200)), model_version=str(champion.version)
            )
            columns = [
                c
                for c in window.columns
                if (c in IMAGE_STAT_COLUMNS or c.startswith(EMBEDDING_PREFIX) or c == "confidence")
                and c in reference.columns
            ]
            if len(window) and columns:
                verdict = run_drift_tests(
                    reference,
                    window,
                    alpha=float(settings.section("monitoring").get("alpha", 0.05)),
                    columns=columns,
                )
                inputs.drifted_features = verdict.drifted_features
        result = enqueue_from_log(
            settings,
            log,
            previous_model=previous_model,
            drifted_features=inputs.drifted_features,
            reference=reference,
        )
    return result, inputs
