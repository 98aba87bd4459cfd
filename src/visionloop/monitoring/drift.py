"""Drift checks between a reference profile and a window of production features, with an honest verdict.

Evidently computes the per-feature tests and the report (``check_drift``); the project chooses the
tests and their thresholds so that the dataset verdict keeps a stated false-alarm rate:

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

``run_drift_tests`` computes the same tests with scipy alone, without the report (milliseconds instead of
about a second): for calibration runs and benchmarks. The tests check that both agree.
"""

from __future__ import annotations

import heapq
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from visionloop.contracts import DriftVerdict, FeatureTest, Severity
from visionloop.monitoring.features import (
    EMBEDDING_PREFIX,
    feature_frame,
    fit_reduction,
    image_stat_frame,
    predict_in_chunks,
)

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel

KS = "ks"
CHI2 = "chi2_homogeneity"
CONSTANT = "constant_fisher"
MIN_EXPECTED = 5.0  # Cochran: pool categories whose expected count is below this
DEFAULT_CRITICAL_DISTANCE = 0.5
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


# --- which test for which column -------------------------------------------------------------------


def is_categorical(series: pd.Series) -> bool:
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


def _clean(series: pd.Series) -> np.ndarray:
    """The values without missing and infinite ones, as Evidently drops them before testing."""
    if is_categorical(series):
        return series.dropna().to_numpy()
    values = series.to_numpy(dtype=float)
    return values[np.isfinite(values)]


def choose_tests(reference: pd.DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """Column → test name, from the reference alone (so the choice can't depend on the window)."""
    tests = {}
    for column in columns:
        values = _clean(reference[column])
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


_TEST_FUNCTIONS = {KS: _ks, CHI2: _chi2_homogeneity, CONSTANT: _constant_fisher}


def feature_test(test: str, reference: pd.Series, current: pd.Series) -> tuple[float, float]:
    """(distance statistic, p-value) of one named test, on the cleaned columns."""
    ref, cur = _clean(reference), _clean(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError(f"column {reference.name!r} has no finite values in the reference or current data")
    return _TEST_FUNCTIONS[test](ref, cur)


# --- verdict ---------------------------------------------------------------------------------------


def severity_of(
    features: Sequence[FeatureTest],
    critical_share: float,
    critical_distance: float = DEFAULT_CRITICAL_DISTANCE,
) -> Severity:
    """none / warning / critical — the rule in the module docstring."""
    drifted = [f for f in features if f.drifted]
    if not drifted:
        return "none"
    share = len(drifted) / len(features)
    if share >= critical_share or max(f.statistic for f in drifted) >= critical_distance:
        return "critical"
    return "warning"


def make_verdict(
    features: list[FeatureTest],
    *,
    alpha: float,
    critical_share: float,
    critical_distance: float = DEFAULT_CRITICAL_DISTANCE,
    n_reference: int,
    n_current: int,
    model_name: str | None = None,
    model_version: str | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
) -> DriftVerdict:
    n_drifted = sum(f.drifted for f in features)
    return DriftVerdict(
        drift=n_drifted > 0,
        severity=severity_of(features, critical_share, critical_distance),
        share_drifted=n_drifted / len(features) if features else 0.0,
        features=features,
        alpha=alpha,
        n_reference=n_reference,
        n_current=n_current,
        model_name=model_name,
        model_version=None if model_version is None else str(model_version),
        window_start=window_start,
        window_end=window_end,
    )


def _prepare(
    reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str] | None, alpha: float
) -> tuple[list[str], dict[str, str], float]:
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
    *,
    alpha: float = 0.05,
    critical_share: float = 0.3,
    critical_distance: float = DEFAULT_CRITICAL_DISTANCE,
    columns: list[str] | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
) -> DriftVerdict:
    """The verdict of ``check_drift`` computed with scipy only — no report; for calibration and benchmarks."""
    cols, tests, threshold = _prepare(reference, current, columns, alpha)
    features = []
    for column in cols:
        statistic, p_value = feature_test(tests[column], reference[column], current[column])
        features.append(FeatureTest(column, tests[column], statistic, p_value, threshold, p_value <= threshold))
    return make_verdict(
        features,
        alpha=alpha,
        critical_share=critical_share,
        critical_distance=critical_distance,
        n_reference=len(reference),
        n_current=len(current),
        model_name=model_name,
        model_version=model_version,
    )


# --- Evidently ---------------------------------------------------------------------------------------


def _register_evidently_tests() -> None:
    """Make the project's tests known to Evidently by name (idempotent)."""
    from evidently.legacy.calculations.stattests.registry import (
        StatTest,
        _registered_stat_tests,
        register_stattest,
    )
    from evidently.legacy.core import ColumnType

    def wrap(test: str):
        def run(reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
            p_value = _TEST_FUNCTIONS[test](_clean(reference), _clean(current))[1]
            return p_value, p_value <= threshold

        run.__name__ = f"visionloop_{test}"
        return run

    specs = {
        CHI2: ("chi-square homogeneity p_value (sparse categories pooled)", [ColumnType.Categorical]),
        CONSTANT: (
            "Fisher exact p_value (off the reference constant)",
            [ColumnType.Numerical, ColumnType.Categorical],
        ),
    }
    for name, (display, types) in specs.items():
        if name not in _registered_stat_tests:
            register_stattest(
                StatTest(name=name, display_name=display, allowed_feature_types=types, default_threshold=0.05),
                default_impl=wrap(name),
            )


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    alpha: float = 0.05,
    critical_share: float = 0.3,
    critical_distance: float = DEFAULT_CRITICAL_DISTANCE,
    columns: list[str] | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
) -> tuple[DriftVerdict, Snapshot]:
    """Run Evidently's ``DataDriftPreset`` with the project's tests and Bonferroni thresholds.

    Returns the verdict (p-values and drifted flags as Evidently computed them; the distance
    statistic from ``feature_test``) and the Evidently snapshot (HTML report, workspace).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Evidently's UI imports deprecated Litestar APIs
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

    _register_evidently_tests()
    cols, tests, threshold = _prepare(reference, current, columns, alpha)
    categorical = [c for c in cols if is_categorical(reference[c])]
    definition = DataDefinition(
        numerical_columns=[c for c in cols if c not in categorical], categorical_columns=categorical
    )
    preset = DataDriftPreset(
        columns=cols,
        per_column_method=tests,
        per_column_threshold=dict.fromkeys(cols, threshold),
        # Evidently's dataset test fails when share >= drift_share: half a column means "any column".
        drift_share=0.5 / len(cols),
    )
    metadata = {k: v for k, v in {"model_name": model_name, "model_version": model_version}.items() if v}
    name = f"drift {model_name or ''} {model_version or ''}".strip()
    with warnings.catch_warnings():
        # Evidently's plots divide by zero on constant columns (correlations); harmless.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([preset], include_tests=True).run(
            Dataset.from_pandas(current[cols], data_definition=definition),
            Dataset.from_pandas(reference[cols], data_definition=definition),
            timestamp=datetime.now(UTC),
            metadata={k: str(v) for k, v in metadata.items()},
            name=name,
        )
    results = evidently_column_results(snapshot)
    features = []
    for column in cols:
        method, p_value, drifted = results[column]
        if method != tests[column]:
            raise RuntimeError(f"Evidently ran {method!r} on {column!r}, expected {tests[column]!r}")
        statistic, _ = feature_test(tests[column], reference[column], current[column])
        features.append(FeatureTest(column, method, statistic, p_value, threshold, drifted))
    verdict = make_verdict(
        features,
        alpha=alpha,
        critical_share=critical_share,
        critical_distance=critical_distance,
        n_reference=len(reference),
        n_current=len(current),
        model_name=model_name,
        model_version=model_version,
        window_start=window_start,
        window_end=window_end,
    )
    return verdict, snapshot


def evidently_column_results(snapshot: Snapshot) -> dict[str, tuple[str, float, bool]]:
    """Column → (method, p-value, drifted) from the ``ValueDrift`` metrics and tests of a snapshot."""
    data = snapshot.dict()
    failed = {
        test["metric_config"]["metric_id"]
        for test in data.get("tests", [])
        if str(getattr(test["status"], "value", test["status"])) == "FAIL"
    }
    results = {}
    for metric in data["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith(":ValueDrift"):
            results[config["column"]] = (config["method"], float(metric["value"]), metric["id"] in failed)
    return results


def evidently_dataset_drift(snapshot: Snapshot) -> bool:
    """Evidently's own dataset verdict (its ``DriftedColumnsCount`` test failed)."""
    data = snapshot.dict()
    ids = {m["id"] for m in data["metrics"] if m["config"].get("type", "").endswith(":DriftedColumnsCount")}
    return any(
        t["metric_config"]["metric_id"] in ids and str(getattr(t["status"], "value", t["status"])) == "FAIL"
        for t in data.get("tests", [])
    )


# --- outputs -----------------------------------------------------------------------------------------


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


def save_report_html(snapshot: Snapshot, path: Path | str) -> Path:
    """Write Evidently's self-contained HTML report (a few MB)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(target))
    return target


def embedding_outliers(reference: pd.DataFrame, current: pd.DataFrame, k: int = 8) -> list[int]:
    """Positions of the ``k`` current rows farthest from the reference in embedding space.

    The distance is to the nearest reference row on the ``emb_*`` columns, standardised by the
    reference spread: the images a person should look at to see what changed.
    """
    cols = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX) and c in current.columns]
    if not cols or current.empty:
        return []
    ref = reference[cols].to_numpy(float)
    scale = ref.std(axis=0)
    scale[scale == 0] = 1.0
    ref, cur = ref / scale, current[cols].to_numpy(float) / scale
    nearest = np.full(len(cur), np.inf)
    for start in range(0, len(ref), 2048):
        block = ref[start : start + 2048]
        d2 = (cur**2).sum(1)[:, None] - 2 * cur @ block.T + (block**2).sum(1)[None, :]
        nearest = np.minimum(nearest, d2.min(axis=1))
    return [int(i) for i in np.argsort(-nearest, kind="stable")[:k]]


# --- folder against folder -------------------------------------------------------------------------


def list_images(directory: Path | str) -> list[Path]:
    """Image files under ``directory`` (recursively, e.g. class-per-folder), in a stable order."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_folder(
    directory: Path | str, *, channels: int, min_side: int, max_pixels: int
) -> tuple[list[np.ndarray], list[tuple[Path, str]]]:
    """Canonical images of a folder, through the same check as uploads; also the files refused and why."""
    from visionloop.data.ingest import InvalidImage, canonicalize_image_bytes

    images, refused = [], []
    for path in list_images(directory):
        try:
            canonical = canonicalize_image_bytes(
                path.read_bytes(), channels=channels, min_side=min_side, max_pixels=max_pixels
            )
        except InvalidImage as exc:
            refused.append((path, exc.reason))
            continue
        images.append(canonical.array)
    return images, refused


@dataclass
class FolderCheck:
    """The result of ``check_folders``: the verdict, Evidently's snapshot and the files refused."""

    verdict: DriftVerdict
    snapshot: Snapshot
    refused: list[tuple[Path, str]]


def check_folders(
    reference: Path | str,
    current: Path | str,
    settings: Settings,
    model: ServableModel | None = None,
) -> FolderCheck:
    """Drift between two image folders, or between a stored reference profile (``.parquet``) and a folder.

    With ``model``, the features include its reduced embedding and outputs; without, image statistics
    only. Images pass the same check as uploads (``data.canonicalize_image_bytes``); refused files are
    listed, not tested. Thresholds come from ``params.yaml`` (``monitoring``).
    """
    data, monitoring = settings.section("data"), settings.section("monitoring")
    channels = int(model.config.get("in_channels", data.get("channels", 1)) if model else data.get("channels", 1))
    limits = {
        "channels": channels,
        "min_side": int(data.get("min_side", 8)),
        "max_pixels": int(data["max_pixels"]),
    }
    current_images, refused = load_folder(current, **limits)
    if not current_images:
        raise ValueError(f"no readable image in {current} ({len(refused)} refused): drift needs images on both sides")
    reference_path = Path(reference)
    if reference_path.is_file() and reference_path.suffix == ".parquet":
        reference_frame = pd.read_parquet(reference_path)
        current_frame = _current_features(current_images, model)
    else:
        reference_images, refused_ref = load_folder(reference_path, **limits)
        if not reference_images:
            raise ValueError(f"no readable image in {reference_path} ({len(refused_ref)} refused): "
                             "drift needs images on both sides")
        refused = refused_ref + refused
        reference_frame, current_frame = folder_features(
            reference_images, current_images, model, int(monitoring.get("embedding_components", 4))
        )
    verdict, snapshot = check_drift(
        reference_frame,
        current_frame,
        alpha=float(monitoring.get("alpha", 0.05)),
        critical_share=float(monitoring.get("critical_share", 0.3)),
        critical_distance=float(monitoring.get("critical_distance", DEFAULT_CRITICAL_DISTANCE)),
        model_name=model.name if model else None,
        model_version=model.version if model else None,
    )
    return FolderCheck(verdict, snapshot, refused)


def _current_features(images: list[np.ndarray], model: ServableModel | None) -> pd.DataFrame:
    if model is None:
        return image_stat_frame(images)
    return feature_frame(images, predict_in_chunks(model, images), model.classes, model.reduction)


def folder_features(
    reference_images: list[np.ndarray],
    current_images: list[np.ndarray],
    model: ServableModel | None,
    n_components: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature frames of two image sets: image statistics only, or with the model's embedding and outputs.

    With a model, the embedding reduction is the model's stored one (as in production monitoring),
    else one fitted on the reference images.
    """
    if model is None:
        return image_stat_frame(reference_images), image_stat_frame(current_images)
    ref_pred = predict_in_chunks(model, reference_images)
    reduction = model.reduction
    if reduction is None:
        k = min(n_components, len(reference_images), ref_pred.embeddings.shape[1])
        reduction = fit_reduction(ref_pred.embeddings, k)
    reference = feature_frame(reference_images, ref_pred, model.classes, reduction)
    current = feature_frame(current_images, predict_in_chunks(model, current_images), model.classes, reduction)
    return reference, current
