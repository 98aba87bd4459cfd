"""The canary's window and its verdict: what the challenger's share of live traffic shows, judged without changing
anything (``promotion.canary`` acts on the verdict, as ``promote.apply_gate`` acts on the gate's).

The window runs from the canary's start to now. Two sources describe it:

* the **prediction log**: every answer is logged with the version that gave it, so the rows of the canary's
  version and of the champion's since the start are the two arms, on the same traffic (the split is random
  or by client key). Compared: how many answers each arm gave, their mean confidence, and the share of each
  predicted class (a chi-square test of homogeneity, ``monitoring.drift``'s ``chi2_homogeneity``, with its
  total-variation distance);
* the serving processes' **counters** (``serving.canary.canary_counters``): requests, failed challenger
  forwards (answered by the champion instead) and server-side answer time per arm.

``judge`` turns that into ``wait``, ``finish`` or ``rollback`` with ``promotion.canary``'s thresholds:

* nothing is judged before the challenger answered ``min_predictions`` requests (its logged answers or its
  counted requests, whichever is larger: a challenger whose every forward fails logs nothing);
* then any alarm rolls back at once — error rate above ``max_error_rate``, mean answer time above
  ``max_latency_ratio`` × the champion's, mean confidence more than ``max_confidence_drop`` below the
  champion's, or predicted classes drifted (p ≤ ``drift_alpha`` and a distance ≥ ``max_label_shift``);
* with no alarm the canary finishes once ``window_seconds`` have passed; short of ``min_predictions`` after
  ``max_seconds`` it is rolled back (not enough evidence to promote).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import CanaryCounters, CanaryState
from visionloop.monitoring.drift import CHI2, feature_test
from visionloop.params import CanaryParams
from visionloop.serving.canary import CANARY_ARM, CHAMPION_ARM, canary_counters
from visionloop.store.predlog import PredictionLog

Action = Literal["wait", "finish", "rollback"]


@dataclass
class ArmAnswers:
    """One arm's logged answers in the window: count per predicted class and summed confidence."""

    labels: dict[str, int]
    confidence_sum: float

    @property
    def n(self) -> int:
        return sum(self.labels.values())

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.n if self.n else None


@dataclass
class CanaryWindow:
    """Everything the verdict is based on, read at one moment."""

    state: CanaryState
    elapsed_s: float
    champion: ArmAnswers
    canary: ArmAnswers
    counters: CanaryCounters


@dataclass
class CanaryVerdict:
    """What the window shows and what to do about it."""

    action: Action
    reason: str
    alarms: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def progress(self) -> str:
        """One line for a person watching: elapsed time, answers per arm, each figure against its limit."""
        f = self.figures
        shown = [f"{f['elapsed_s']:.0f}s", f"canary {f['canary_answers']} / champion {f['champion_answers']} answers"]
        for key, label in (("error_rate", "errors"), ("latency_ratio", "latency×"),
                           ("confidence_drop", "confidence drop"), ("label_shift", "class shift")):
            if f.get(key) is not None:
                shown.append(f"{label} {f[key]:.3f}")
        return f"{' · '.join(shown)} → {self.action}"


def read_window(settings: Settings, state: CanaryState, now: datetime | None = None) -> CanaryWindow:
    """The window of ``state`` now: both arms' logged answers and every serving process's counters."""
    now = now or datetime.now(UTC)
    started = datetime.fromisoformat(state.started_at)
    plog = PredictionLog(settings.db_url)
    try:
        counts = plog.answer_counts(started, [state.champion, state.version])
    finally:
        plog.dispose()

    def arm(version: str) -> ArmAnswers:
        rows = counts[counts["model_version"] == version]
        return ArmAnswers(dict(zip(rows["label"], rows["n"].astype(int), strict=True)),
                          float(rows["confidence_sum"].sum()))

    return CanaryWindow(state, (now - started).total_seconds(), arm(state.champion), arm(state.version),
                        canary_counters(settings.state_dir, state))


def label_shift(champion: ArmAnswers, canary: ArmAnswers) -> tuple[float, float]:
    """(total-variation distance, chi-square p-value) between the arms' predicted classes."""
    def values(answers: ArmAnswers) -> pd.Series:
        return pd.Series(np.repeat(list(answers.labels), list(answers.labels.values())), dtype=object)

    return feature_test(CHI2, values(champion), values(canary))


def judge(rules: CanaryParams, window: CanaryWindow) -> CanaryVerdict:
    """``wait``, ``finish`` or ``rollback`` for the window, by the rules in the module docstring."""
    canary_counts = window.counters.get(CANARY_ARM)
    champion_counts = window.counters.get(CHAMPION_ARM)
    seen = max(window.canary.n, canary_counts.requests if canary_counts else 0)
    figures: dict[str, Any] = {
        "elapsed_s": round(window.elapsed_s, 1),
        "canary_answers": window.canary.n,
        "champion_answers": window.champion.n,
        "canary_requests": canary_counts.requests if canary_counts else 0,
        "canary_failed": canary_counts.failed if canary_counts else 0,
        "error_rate": None, "latency_ratio": None, "confidence_drop": None, "label_shift": None, "label_p": None,
    }
    if seen < rules.min_predictions:
        if window.elapsed_s >= rules.max_seconds:
            reason = (f"not enough traffic: the canary answered {seen} requests in {window.elapsed_s:.0f} s, "
                      f"fewer than the {rules.min_predictions} needed within {rules.max_seconds:.0f} s")
            return CanaryVerdict("rollback", reason, [reason], figures)
        return CanaryVerdict("wait", f"{seen} of {rules.min_predictions} canary answers so far", [], figures)
    alarms = _alarms(rules, window, figures, canary_counts, champion_counts)
    if alarms:
        return CanaryVerdict("rollback", "; ".join(alarms), alarms, figures)
    summary = (f"no alarm in {window.elapsed_s:.0f} s: the canary v{window.state.version} answered {seen} requests "
               f"({window.canary.n} logged) beside {window.champion.n} answers of v{window.state.champion}")
    if window.elapsed_s >= rules.window_seconds:
        return CanaryVerdict("finish", summary, [], figures)
    return CanaryVerdict("wait", summary, [], figures)


def _alarms(rules: CanaryParams, window: CanaryWindow, figures: dict[str, Any], canary_counts: Any,
            champion_counts: Any) -> list[str]:
    """Every threshold the window crosses, in words (fills ``figures`` on the way)."""
    alarms = []
    if canary_counts and canary_counts.requests:
        rate = figures["error_rate"] = canary_counts.failed / canary_counts.requests
        if rate > rules.max_error_rate:
            alarms.append(f"error rate {rate:.3f} > {rules.max_error_rate} ({canary_counts.failed} of "
                          f"{canary_counts.requests} challenger forwards failed; the champion answered them)")
    if canary_counts and champion_counts and canary_counts.mean_latency_s and champion_counts.mean_latency_s:
        ratio = figures["latency_ratio"] = canary_counts.mean_latency_s / champion_counts.mean_latency_s
        if ratio > rules.max_latency_ratio:
            canary_ms, champion_ms = 1000 * canary_counts.mean_latency_s, 1000 * champion_counts.mean_latency_s
            alarms.append(f"latency {ratio:.2f}× the champion's > {rules.max_latency_ratio}× "
                          f"({canary_ms:.1f} ms vs {champion_ms:.1f} ms)")
    champion_conf, canary_conf = window.champion.mean_confidence, window.canary.mean_confidence
    if champion_conf is not None and canary_conf is not None:
        drop = figures["confidence_drop"] = champion_conf - canary_conf
        if drop > rules.max_confidence_drop:
            alarms.append(f"mean confidence {canary_conf:.3f} vs the champion's {champion_conf:.3f}: a drop of "
                          f"{drop:.3f} > {rules.max_confidence_drop}")
    if window.champion.n and window.canary.n:
        distance, p_value = label_shift(window.champion, window.canary)
        figures["label_shift"], figures["label_p"] = distance, p_value
        if p_value <= rules.drift_alpha and distance >= rules.max_label_shift:
            alarms.append(f"predicted classes drifted from the champion's on the same traffic: {100 * distance:.1f} % "
                          f"of answers moved class (≥ {100 * rules.max_label_shift:.1f} %), chi-square p={p_value:.2g} "
                          f"≤ {rules.drift_alpha}{_moved(window)}")
    return alarms


def _moved(window: CanaryWindow) -> str:
    """The classes whose share changed most, e.g. ``; class 3: 10.2 % → 0.0 %``."""
    champion, canary = window.champion, window.canary
    shares = {label: (champion.labels.get(label, 0) / champion.n, canary.labels.get(label, 0) / canary.n)
              for label in set(champion.labels) | set(canary.labels)}
    worst = sorted(shares.items(), key=lambda item: -abs(item[1][0] - item[1][1]))[:2]
    return "; " + ", ".join(f"class {label}: {100 * a:.1f} % → {100 * b:.1f} %" for label, (a, b) in worst)
