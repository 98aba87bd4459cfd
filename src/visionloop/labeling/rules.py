"""The sampling rules of the labeling queue: which production images are worth a person's time.

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
scan may look at the same prediction twice and decide the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from visionloop.monitoring.features import PROBABILITY_PREFIX
from visionloop.store.schema import as_utc

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.params import LabelingParams, RuleParams

DISAGREEMENT, DRIFT, LOW_CONFIDENCE, RANDOM = "disagreement", "drift", "low_confidence", "random"
REASONS: tuple[str, ...] = (DISAGREEMENT, DRIFT, LOW_CONFIDENCE, RANDOM)


@dataclass(frozen=True)
class LabelingRules:
    """``labeling:`` of params.yaml plus the project seed, which makes the random rule reproducible."""

    params: LabelingParams
    seed: int

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelingRules:
        return cls(settings.params.labeling, settings.seed)

    def rule(self, reason: str) -> RuleParams:
        """The params of one rule (``REASONS``): its cap and weight, and its own threshold."""
        return getattr(self.params, reason)

    def weight(self, reason: str) -> float:
        return self.rule(reason).weight

    def has_room(self, reason: str, taken: int) -> bool:
        """Whether the rule's hourly cap allows one more image after ``taken`` this hour."""
        cap = self.rule(reason).cap_per_hour
        return cap is None or taken < cap


# --- the scores --------------------------------------------------------------------------------------


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
    probabilities for that prediction's image (``scan.previous_model_probabilities``).
    """
    if previous.empty or frame.empty:
        return pd.Series(np.nan, index=frame.index)
    distance, _, differs = _compare_with_previous(frame, previous)
    return pd.Series(np.where(differs, distance, np.nan), index=frame.index)


def other_guesses(frame: pd.DataFrame, previous: pd.DataFrame) -> pd.Series:
    """The previous version's top guess where the disagreement rule fires, None elsewhere: what a labeler is
    told the other model said (the rule alone only says that it disagreed)."""
    if previous.empty or frame.empty:
        return pd.Series(None, index=frame.index, dtype=object)
    _, prior_top, differs = _compare_with_previous(frame, previous)
    return pd.Series(np.where(differs, prior_top, None), index=frame.index, dtype=object)


def _compare_with_previous(frame: pd.DataFrame, previous: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``frame``: the total-variation distance to the previous outputs, the previous top guess,
    and whether that guess is known and differs from the logged label."""
    current = _probabilities(frame)
    classes = list(dict.fromkeys([*current.columns, *previous.columns]))
    prior = previous.reindex(frame["id"].to_numpy())
    known = prior.notna().any(axis=1).to_numpy()
    prior_values = prior.reindex(columns=classes).fillna(0.0).to_numpy()
    current_values = current.reindex(columns=classes).fillna(0.0).to_numpy()
    distance = 0.5 * np.abs(current_values - prior_values).sum(axis=1)
    prior_top = np.asarray(classes, dtype=object)[prior_values.argmax(axis=1)]
    differs = known & (prior_top != frame["label"].astype(str).to_numpy())
    return distance, prior_top, differs


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
    params = rules.params
    scores = {
        DISAGREEMENT: nothing
        if previous_probabilities is None
        else disagreement_scores(frame, previous_probabilities),
        DRIFT: nothing
        if not drifted_features or reference is None
        else drift_scores(frame, drifted_features, reference, params.drift.quantile),
        LOW_CONFIDENCE: low_confidence_scores(frame, params.low_confidence.threshold),
        RANDOM: random_scores(frame, params.random.rate, rules.seed),
    }
    return pd.DataFrame(scores, index=frame.index, columns=list(REASONS))


# --- the caps ----------------------------------------------------------------------------------------


def traffic_hour(moment: datetime | pd.Timestamp) -> datetime:
    """The UTC hour a prediction belongs to, for the per-hour caps."""
    return as_utc(pd.Timestamp(moment).to_pydatetime()).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Selection:
    """The rules' decision on one matched prediction; ``capped`` when every matching rule was full."""

    prediction_id: str
    reason: str
    priority: float
    predicted_at: datetime
    drifted: bool
    capped: bool
    other_label: str | None = None  # the other model's guess, where the disagreement rule fired
    other_version: str | None = None


def select_for_queue(
    frame: pd.DataFrame,
    scores: pd.DataFrame,
    rules: LabelingRules,
    taken: Counter,
    *,
    others: pd.Series | None = None,
    other_version: str | None = None,
) -> list[Selection]:
    """The matched predictions, filling each rule's hourly cap best-first.

    ``taken`` counts (reason, traffic hour) already offered; it is updated. Predictions are taken in
    order of their best priority, and each goes to its highest-weight rule with room left. ``others``
    (``other_guesses``) and ``other_version``: what the model the disagreement rule compared with said,
    kept with every selection it disagreed on, whichever rule queued it.
    """
    selections = []
    order = sorted(REASONS, key=lambda r: -rules.weight(r))
    matched = scores.notna().any(axis=1)
    best = pd.Series(-np.inf, index=frame.index)
    for reason in REASONS:
        best = np.maximum(best, (scores[reason] + rules.weight(reason)).fillna(-np.inf))
    for position in best[matched].sort_values(ascending=False, kind="stable").index:
        row = frame.loc[position]
        hour = traffic_hour(row["created_at"])
        reasons = [r for r in order if not math.isnan(scores.at[position, r])]
        chosen = next((r for r in reasons if rules.has_room(r, taken[(r, hour)])), None)
        reason = chosen or reasons[0]
        if chosen:
            taken[(chosen, hour)] += 1
        other = None if others is None or pd.isna(others.at[position]) else str(others.at[position])
        selections.append(
            Selection(
                prediction_id=str(row["id"]),
                reason=reason,
                priority=float(rules.weight(reason) + scores.at[position, reason]),
                predicted_at=as_utc(pd.Timestamp(row["created_at"]).to_pydatetime()),
                drifted=not math.isnan(scores.at[position, DRIFT]),
                capped=chosen is None,
                other_label=other,
                other_version=other_version if other is not None else None,
            )
        )
    return selections
