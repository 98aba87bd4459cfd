"""Drift checks between a reference profile and a window of production features, with an honest verdict.

The verdict is computed here, once per feature, with scipy (``run_drift_tests``); Evidently only shows
it (``evidently_report``: the report of the monitor and of ``visionloop drift --report``, built where a
report is asked for). The project chooses the tests and their thresholds so that the dataset verdict
keeps a stated false-alarm rate:

* **Tests per column** (the same at every sample size — Evidently's default would switch numeric
  columns to a Wasserstein distance above 1,000 reference rows):

  ====================  ===========================================  ===============================
  test                  used for                                     ``statistic`` (a distance, 0–1)
  ====================  ===========================================  ===============================
  ``ks``                numeric columns                              two-sample K-S D
  ``chi2_homogeneity``  categorical columns (``pred_label``)         total-variation distance
  ``constant_fisher``   columns constant in the reference            share of current values that
                                                                     differ from the constant
  ====================  ===========================================  ===============================

  ``chi2_homogeneity`` is the two-sample chi-square test of the 2×k table (reference vs current),
  not Evidently's built-in ``chisquare``, which treats the reference shares as exact and so raises
  false alarms when the window is not much smaller than the reference; categories whose expected
  count is below 5 are pooled (Cochran's rule) so small windows stay calibrated.
  ``constant_fisher`` is Fisher's exact test on "equals the reference constant" (one-sided): a
  column that is constant in both sets (width of 32×32 digits, colourfulness of grayscale) can't
  raise an alarm, while a change of that constant (images of another size) is detected.

* **Bonferroni**: with ``m`` tested columns each test uses the p-value threshold ``alpha / m``, so
  the probability that a batch drawn from the reference distribution raises any alarm is at most
  ``alpha`` (whatever the correlation between the features). Drift = at least one feature drifted.

* **Severity**: ``none`` without drift; ``critical`` when the share of drifted features is at least
  ``critical_share`` or a drifted feature moved by a distance of at least ``critical_distance``
  (e.g. K-S D ≥ 0.5: half of the distribution moved past the other); ``warning`` otherwise. The
  distance, unlike the p-value, does not grow with the window size, so a large window with a tiny
  but significant shift stays a warning.

``run_drift_tests`` computes the verdict with scipy alone (milliseconds): ``visionloop drift --json``,
calibration runs, benchmarks and the labeling queue. ``visionloop.monitoring.evidently_report.check_drift``
adds Evidently's report of that same verdict (seconds, and Evidently's import) for the monitor and
``visionloop drift --report``; it registers the tests with Evidently by name and refuses a report whose
tests disagree with the verdict. The thresholds are arguments (``DriftThresholds``), filled by the caller
from ``params.yaml``'s ``monitoring``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from visionloop.contracts import DriftVerdict, FeatureTest, Severity
from visionloop.params import MonitoringParams

KS = "ks"
CHI2 = "chi2_homogeneity"
CONSTANT = "constant_fisher"
MIN_EXPECTED = 5.0  # Cochran: pool categories whose expected count is below this


@dataclass(frozen=True)
class DriftThresholds:
    """When a check says drift (``alpha``, family-wise) and when it says critical: the rule above."""

    alpha: float
    critical_share: float
    critical_distance: float

    @classmethod
    def of(cls, params: MonitoringParams) -> DriftThresholds:
        """The thresholds of ``params.yaml``'s ``monitoring`` section."""
        return cls(params.alpha, params.critical_share, params.critical_distance)


# --- which test for which column -------------------------------------------------------------------


def is_categorical(series: pd.Series) -> bool:
    """Tested by category counts (strings, booleans) rather than as numbers."""
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def drift_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str] | None = None) -> list[str]:
    """The tested columns: ``columns``, or every column present in both frames.

    Identifier-like columns of a prediction log (ids, times, paths) should be dropped before, or
    named explicitly with ``columns``.
    """
    if columns is not None:
        missing = [c for c in columns if c not in reference.columns or c not in current.columns]
        if missing:
            raise ValueError(f"columns missing from the reference or current data: {missing}")
        return list(columns)
    return [c for c in reference.columns if c in current.columns]


def clean_values(series: pd.Series) -> np.ndarray:
    """The values without missing and infinite ones, as Evidently drops them before testing."""
    if is_categorical(series):
        return series.dropna().to_numpy()
    values = series.to_numpy(dtype=float)
    return values[np.isfinite(values)]


def choose_tests(reference: pd.DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """Column → test name, from the reference alone (so the choice can't depend on the window)."""
    tests = {}
    for column in columns:
        values = clean_values(reference[column])
        if values.size == 0:
            raise ValueError(f"column {column!r} has no finite values in the reference")
        if pd.unique(values).size == 1:
            tests[column] = CONSTANT
        elif is_categorical(reference[column]):
            tests[column] = CHI2
        else:
            tests[column] = KS
    return tests


# --- the tests themselves (scipy) ------------------------------------------------------------------


def _ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    result = stats.ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def _chi2_homogeneity(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample chi-square on the category counts, sparse categories pooled; returns (TVD, p)."""
    ref_counts = pd.Series(reference).value_counts()
    cur_counts = pd.Series(current).value_counts()
    categories = ref_counts.index.union(cur_counts.index)
    r = ref_counts.reindex(categories, fill_value=0).to_numpy(float)
    c = cur_counts.reindex(categories, fill_value=0).to_numpy(float)
    n_r, n_c = r.sum(), c.sum()
    distance = 0.5 * float(np.abs(r / n_r - c / n_c).sum())
    # Expected count of a bin in the smaller sample under homogeneity: total * min(n) / N.
    scale = min(n_r, n_c) / (n_r + n_c)
    heap = [(r[i] + c[i], i, r[i], c[i]) for i in range(len(categories))]
    heapq.heapify(heap)
    while len(heap) > 1 and heap[0][0] * scale < MIN_EXPECTED:
        t1, i1, r1, c1 = heapq.heappop(heap)
        t2, _, r2, c2 = heapq.heappop(heap)
        heapq.heappush(heap, (t1 + t2, i1, r1 + r2, c1 + c2))
    if len(heap) < 2:
        return distance, 1.0  # everything pooled into one bin: nothing to test at this size
    table = np.array([[b[2] for b in heap], [b[3] for b in heap]])
    p_value = stats.chi2_contingency(table, correction=True).pvalue
    return distance, float(p_value)


def _constant_fisher(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Fisher's exact test: are more current values off the reference's constant than reference values?"""
    constant = reference[0]
    off = int((current != constant).sum())
    if off == 0:
        return 0.0, 1.0
    table = [[off, len(current) - off], [int((reference != constant).sum()), len(reference)]]
    return off / len(current), float(stats.fisher_exact(table, alternative="greater").pvalue)


TEST_FUNCTIONS = {KS: _ks, CHI2: _chi2_homogeneity, CONSTANT: _constant_fisher}


def feature_test(test: str, reference: pd.Series, current: pd.Series) -> tuple[float, float]:
    """(distance statistic, p-value) of one named test, on the cleaned columns."""
    ref, cur = clean_values(reference), clean_values(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError(f"column {reference.name!r} has no finite values in the reference or current data")
    return TEST_FUNCTIONS[test](ref, cur)


# --- verdict ---------------------------------------------------------------------------------------


def severity_of(features: Sequence[FeatureTest], thresholds: DriftThresholds) -> Severity:
    """none / warning / critical — the rule in the module docstring."""
    drifted = [f for f in features if f.drifted]
    if not drifted:
        return "none"
    share = len(drifted) / len(features)
    if share >= thresholds.critical_share or max(f.statistic for f in drifted) >= thresholds.critical_distance:
        return "critical"
    return "warning"


def make_verdict(
    features: list[FeatureTest], thresholds: DriftThresholds, *, n_reference: int, n_current: int, **labels: str | None
) -> DriftVerdict:
    """The dataset verdict from the per-feature tests: drift when any feature drifted, with its severity.

    ``labels``: what the verdict is about, ``DriftVerdict``'s model_name, model_version, window_start, window_end.
    """
    n_drifted = sum(f.drifted for f in features)
    return DriftVerdict(
        drift=n_drifted > 0,
        severity=severity_of(features, thresholds),
        share_drifted=n_drifted / len(features) if features else 0.0,
        features=features,
        alpha=thresholds.alpha,
        n_reference=n_reference,
        n_current=n_current,
        **labels,
    )


def plan_tests(
    reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str] | None, alpha: float
) -> tuple[list[str], dict[str, str], float]:
    """(tested columns, column → test, Bonferroni per-test threshold), after checking there is data to test."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if reference.empty or current.empty:
        raise ValueError(f"drift needs rows on both sides (reference {len(reference)}, current {len(current)})")
    cols = drift_columns(reference, current, columns)
    if not cols:
        raise ValueError("no columns to test")
    return cols, choose_tests(reference, cols), alpha / len(cols)


def run_drift_tests(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: DriftThresholds,
    columns: list[str] | None = None,
    **labels: str | None,
) -> DriftVerdict:
    """The verdict: each feature's test run once, with scipy (milliseconds) — no Evidently, no report.

    ``labels``: what the verdict is about (``make_verdict``). ``evidently_report.drift_report`` shows a
    verdict made here in Evidently's report, and checks that Evidently's tests agree with it.
    """
    cols, tests, threshold = plan_tests(reference, current, columns, thresholds.alpha)
    features = []
    for column in cols:
        statistic, p_value = feature_test(tests[column], reference[column], current[column])
        features.append(FeatureTest(column, tests[column], statistic, p_value, threshold, p_value <= threshold))
    return make_verdict(features, thresholds, n_reference=len(reference), n_current=len(current), **labels)


# --- the verdict as JSON -----------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def verdict_json(verdict: DriftVerdict) -> str:
    """The verdict as JSON, for people and machines (the ``--json`` output and the saved artifact).

    Fields: drift, severity, share_drifted, drifted_features, alpha, n_reference, n_current,
    model_name, model_version, window_start, window_end, created_at, and ``features``: one object per
    tested feature with feature, test, statistic (a distance in 0–1), p_value, threshold, drifted.
    """
    return json.dumps(_json_safe(verdict.to_dict()), indent=2)
