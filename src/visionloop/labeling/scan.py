"""One scan of the prediction log: apply the sampling rules (``labeling.rules``) to what was logged since
the last scan and put the picks in the labeling queue (``labeling.queue``).

Every rule is a deterministic function of the prediction, so a scan safely looks again at the last
``scan_overlap_seconds`` before where the previous one stopped: rows the background log writer stored
late are not missed, and nothing is queued twice. Each scan is recorded (``label_queue_scans``).

``enqueue_with_registry`` is the entry point of ``visionloop label enqueue`` and of the monitor flow:
it finds the inputs of the disagreement rule (the previous champion) and of the drift rule (the
champion's drifted features) in the registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa

from visionloop.contracts import BUNDLE_FILES
from visionloop.data.images import load_image
from visionloop.labeling.queue import LabelQueue
from visionloop.labeling.rules import DRIFT, REASONS, LabelingRules, other_guesses, rule_scores
from visionloop.models.cache import load_project_version, load_registered, load_version, version_dir
from visionloop.models.registry import resolve
from visionloop.models.uris import alias_uri, is_model_uri, version_uri
from visionloop.monitoring.drift import DriftThresholds, run_drift_tests
from visionloop.monitoring.features import CONFIDENCE_COLUMN, EMBEDDING_PREFIX, IMAGE_STAT_COLUMNS, predict_in_chunks
from visionloop.promotion.audit import champion_stack, history
from visionloop.store.predlog import PredictionLog
from visionloop.store.schema import as_utc, label_scans_table

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel

log = logging.getLogger(__name__)


@dataclass
class EnqueueResult:
    """What one pass of the rules over some predictions queued, per reason."""

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


def enqueue_frame(
    queue: LabelQueue,
    frame: pd.DataFrame,
    *,
    previous_probabilities: pd.DataFrame | None = None,
    previous_version: str | None = None,
    drifted_features: Sequence[str] | None = None,
    reference: pd.DataFrame | None = None,
    now: datetime | None = None,
) -> EnqueueResult:
    """Apply the queue's rules to predictions (a ``PredictionLog.read_window`` frame) not yet in the queue.

    Where the disagreement rule fires, the queue row keeps the previous version's guess and
    ``previous_version`` (the labeling page shows "v1 said 7")."""
    now = as_utc(now or datetime.now(UTC))
    result = EnqueueResult()
    if frame.empty:
        return result
    frame = frame[~frame["id"].astype(str).isin(queue.present(frame["id"].astype(str).tolist()))]
    result.examined = len(frame)
    if frame.empty:
        return result
    result.through = as_utc(pd.Timestamp(frame["created_at"].max()).to_pydatetime())
    scores = rule_scores(
        frame,
        queue.rules,
        previous_probabilities=previous_probabilities,
        drifted_features=drifted_features,
        reference=reference,
    )
    result.drifted = int(scores[DRIFT].notna().sum())
    others = None if previous_probabilities is None else other_guesses(frame, previous_probabilities)
    for selection in queue.admit(frame, scores, now, others=others, other_version=previous_version):
        (result.capped if selection.capped else result.queued)[selection.reason] += 1
    return result


def last_scan_through(queue: LabelQueue) -> datetime | None:
    """The newest prediction time any scan examined (where the next scan continues)."""
    queue.ensure_schema()
    with queue.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.max(label_scans_table.c.through))).scalar_one_or_none()


def record_scan(queue: LabelQueue, result: EnqueueResult, now: datetime | None = None) -> None:
    """Remember a scan (``label_queue_scans``): where the next one continues, and what it queued."""
    queue.ensure_schema()
    row = {
        "scanned_at": as_utc(now or datetime.now(UTC)),
        "through": result.through,
        "examined": result.examined,
        "result": json.dumps(result.to_dict()),
    }
    with queue.engine.begin() as connection:
        connection.execute(label_scans_table.insert(), [row])


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
    through = last_scan_through(queue)
    since = None if through is None else through - timedelta(seconds=queue.rules.params.scan_overlap_seconds)
    frame = log.read_window(since=since)
    if previous_probabilities is None and previous_model is not None and not frame.empty:
        previous_probabilities = previous_model_probabilities(frame, previous_model)
    result = enqueue_frame(
        queue,
        frame,
        previous_probabilities=previous_probabilities,
        previous_version=None if previous_model is None else str(previous_model.version),
        drifted_features=drifted_features,
        reference=reference,
        now=now,
    )
    if result.through is None and through is not None:
        result.through = through
    record_scan(queue, result, now)
    return result


def previous_model_probabilities(frame: pd.DataFrame, model: ServableModel) -> pd.DataFrame:
    """The previous version's probabilities for the stored images of ``frame`` (index = prediction id).

    Rows answered by that same version, and rows whose image is missing or unreadable, are left out.
    """
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


# --- a scan with its inputs from the registry ----------------------------------------------------------


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
      (the monitor flow), else the registry's champion and the profile in its bundle.
    * previous version: ``previous`` (a ``models:/`` URI or a version number), else the champion
      before the current one in the promotion history; none → no disagreement rule.
    * drifted features: ``drifted_features``, else a drift test (``drift.run_drift_tests``) of the
      latest ``monitoring.window`` predictions of the champion against its reference profile.
    """
    log = log or PredictionLog(settings.db_url)
    inputs = ScanInputs()
    if champion is None:
        champion, profile = _champion(settings, inputs)
        reference = profile if reference is None else reference
    previous_model = _previous_model(settings, previous, champion, inputs)
    if drifted_features is not None:
        inputs.drifted_features = list(drifted_features)
    elif reference is not None and champion is not None:
        inputs.drifted_features = _drifted_features(settings, log, champion, reference)
    result = enqueue_from_log(
        settings,
        log,
        previous_model=previous_model,
        drifted_features=inputs.drifted_features,
        reference=reference,
    )
    return result, inputs


def _champion(settings: Settings, inputs: ScanInputs) -> tuple[ServableModel | None, pd.DataFrame | None]:
    """The registry's champion and the reference profile in its bundle; (None, None) without a champion."""
    try:
        version = resolve(settings, alias_uri(settings.model_name))
        profile = version_dir(settings, version) / BUNDLE_FILES["reference_profile"]
        champion = load_version(settings, version)
    except Exception as error:  # noqa: BLE001 - no champion: low confidence and random still work
        inputs.notes.append(f"no champion ({str(error).splitlines()[0]}): drift rule off")
        return None, None
    return champion, pd.read_parquet(profile) if profile.exists() else None


def _previous_model(
    settings: Settings, previous: str | None, champion: ServableModel | None, inputs: ScanInputs
) -> ServableModel | None:
    """The version the disagreement rule compares with: ``previous`` when asked for (a failure to load it
    is an error), else the champion before ``champion`` in the promotion history, if it still loads."""
    model = None
    if previous is not None:
        uri = previous if is_model_uri(previous) else version_uri(settings.model_name, previous)
        model = load_registered(settings, uri)
    elif champion is not None:
        stack = [v for v in champion_stack(history(settings)) if v != str(champion.version)]
        if stack:
            try:
                model = load_project_version(settings, stack[-1])
            except Exception as error:  # noqa: BLE001 - e.g. deleted since: the other rules still run
                inputs.notes.append(f"previous champion v{stack[-1]} unavailable ({str(error).splitlines()[0]})")
    if model is not None:
        inputs.previous_version = str(model.version)
    else:
        inputs.notes.append("no previous champion: disagreement rule off")
    return model


def _drifted_features(
    settings: Settings, log: PredictionLog, champion: ServableModel, reference: pd.DataFrame
) -> list[str]:
    """The features of the champion's latest ``monitoring.window`` predictions that drifted from its reference."""
    monitoring = settings.params.monitoring
    window = log.read_window(last_n=monitoring.window, model_version=str(champion.version))
    columns = [
        c
        for c in window.columns
        if (c in IMAGE_STAT_COLUMNS or c.startswith(EMBEDDING_PREFIX) or c == CONFIDENCE_COLUMN)
        and c in reference.columns
    ]
    if not len(window) or not columns:
        return []
    verdict = run_drift_tests(reference, window, DriftThresholds.of(monitoring), columns=columns)
    return verdict.drifted_features
