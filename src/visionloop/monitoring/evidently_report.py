"""Evidently glue: the drift check as an Evidently report, its HTML, and the workspace that shows drift over time.

``drift_report`` runs Evidently's ``DataDriftPreset`` with the project's own tests and Bonferroni thresholds
(``visionloop.monitoring.drift``, which computes the verdict), so the report a person opens shows exactly
the verdict the monitor acts on; the tests are registered with Evidently by name and scored as
-log10(p) (Evidently prints two decimals: a threshold of 0.0021 would read "0.00"). Columns constant in
the reference and the window are left out of the report, the strongest evidence comes first. Importing this module
imports Evidently (seconds): only the paths that show a report do (the monitor, ``drift --report``).
``add_to_workspace`` files the snapshot in the workspace ``<state>/evidently`` (one project per model
name) for ``evidently ui --workspace <state>/evidently``.
"""

from __future__ import annotations

import math
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import DriftVerdict, FeatureTest
from visionloop.monitoring.drift import (
    CHI2,
    CONSTANT,
    KS,
    TEST_FUNCTIONS,
    DriftThresholds,
    clean_values,
    is_categorical,
    run_drift_tests,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # Evidently's UI imports deprecated Litestar APIs
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.report import Snapshot
    from evidently.legacy.calculations.stattests.registry import StatTest, _registered_stat_tests, register_stattest
    from evidently.legacy.core import ColumnType
    from evidently.metrics import MeanValue
    from evidently.presets import DataDriftPreset
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel
    from evidently.ui.workspace import Workspace


# Evidently formats scores and thresholds with two decimals: a p-value threshold of 0.0021 reads "0.00".
# The report shows each test's evidence as -log10(p) instead (drift when it reaches -log10 of the
# per-test threshold: 0.0021 → 2.68), capped where a p-value underflows to 0.
MAX_SCORE = 300.0
EVIDENTLY_METHODS = {KS: "visionloop_ks", CHI2: f"visionloop_{CHI2}", CONSTANT: f"visionloop_{CONSTANT}"}
_VERDICT_TESTS = {method: test for test, method in EVIDENTLY_METHODS.items()}
_SCORE = "score = -log10(p-value), drift when the score reaches the threshold = -log10(alpha / tested features)"


def evidence(p_value: float) -> float:
    """-log10(p), the score the report shows for a p-value (capped at ``MAX_SCORE``)."""
    return MAX_SCORE if p_value <= 10**-MAX_SCORE else min(MAX_SCORE, -math.log10(p_value))


def _register_evidently_tests() -> None:
    """Make the project's tests known to Evidently by name (idempotent), each scored as ``evidence``."""

    def wrap(test: str):
        def run(reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
            score = evidence(TEST_FUNCTIONS[test](clean_values(reference), clean_values(current))[1])
            return score, score >= threshold

        run.__name__ = EVIDENTLY_METHODS[test]
        return run

    specs = {
        KS: ("two-sample Kolmogorov-Smirnov", [ColumnType.Numerical]),
        CHI2: ("chi-square homogeneity (sparse categories pooled)", [ColumnType.Categorical]),
        CONSTANT: ("Fisher exact, off the reference constant", [ColumnType.Numerical, ColumnType.Categorical]),
    }
    for test, (display, types) in specs.items():
        if EVIDENTLY_METHODS[test] not in _registered_stat_tests:
            register_stattest(
                StatTest(
                    name=EVIDENTLY_METHODS[test],
                    display_name=f"{display}; {_SCORE}",
                    allowed_feature_types=types,
                    default_threshold=evidence(0.05),
                ),
                default_impl=wrap(test),
            )


def shown_features(verdict: DriftVerdict) -> list[FeatureTest]:
    """The features the report shows, strongest evidence first.

    A column constant in the reference and in the window (width of 32×32 digits, colourfulness of
    grayscale) can't drift and says nothing: it is left out (``constant_fisher`` with distance 0);
    a changed constant is shown. Order: p-value ascending, then distance descending.
    """
    shown = [f for f in verdict.features if not (f.test == CONSTANT and f.statistic == 0.0)]
    return sorted(shown or verdict.features, key=lambda f: (f.p_value, -f.statistic))


SEVERITY_LEVELS = {"none": 0, "warning": 1, "critical": 2}
SEVERITY_COLUMN, VERSION_COLUMN = "verdict_severity", "verdict_model_version"
TOP_FEATURES = 5  # the dashboard's per-feature panel


def snapshot_tags(verdict: DriftVerdict) -> list[str]:
    """Tags listed beside each snapshot in the UI: the severity and the model version."""
    tags = [f"severity {verdict.severity}"]
    return tags + ([f"model v{verdict.model_version}"] if verdict.model_version else [])


def _markers(verdict: DriftVerdict, rows: int) -> pd.DataFrame:
    """The verdict's severity (0 none, 1 warning, 2 critical) and model version as constant columns.

    Evidently's dashboard charts metric values, not tags (and its series filters match one tag set per
    metric), so the report adds their ``MeanValue``: severity over time and the version as a marker.
    """
    markers = {SEVERITY_COLUMN: float(SEVERITY_LEVELS[verdict.severity])}
    if verdict.model_version and str(verdict.model_version).isdigit():
        markers[VERSION_COLUMN] = float(verdict.model_version)
    return pd.DataFrame({k: [v] * rows for k, v in markers.items()})


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: DriftThresholds,
    *,
    columns: list[str] | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
) -> tuple[DriftVerdict, Snapshot]:
    """The verdict (``drift.run_drift_tests``) and Evidently's report of it, for the monitor and ``--report``."""
    verdict = run_drift_tests(
        reference,
        current,
        thresholds,
        columns,
        model_name=model_name,
        model_version=None if model_version is None else str(model_version),
        window_start=window_start,
        window_end=window_end,
    )
    return verdict, drift_report(reference, current, verdict)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, verdict: DriftVerdict) -> Snapshot:
    """Evidently's ``DataDriftPreset`` report of ``verdict`` on the frames it was computed from.

    The preset runs the verdict's tests (registered with Evidently by name) at its Bonferroni
    threshold, so the page a person opens shows what the monitor acts on; a report whose tests
    disagree with the verdict (another method, another drifted flag) is refused, not shown.
    """
    _register_evidently_tests()
    shown = shown_features(verdict)
    cols = [f.feature for f in shown]
    categorical = [c for c in cols if is_categorical(reference[c])]
    markers = list(_markers(verdict, 0).columns)
    definition = DataDefinition(
        numerical_columns=[c for c in cols if c not in categorical] + markers, categorical_columns=categorical
    )
    preset = DataDriftPreset(
        columns=cols,
        per_column_method={f.feature: EVIDENTLY_METHODS[f.test] for f in shown},
        per_column_threshold={f.feature: evidence(f.threshold) for f in shown},
        # Evidently's dataset test fails when share >= drift_share: half a column means "any column".
        drift_share=0.5 / len(cols),
    )
    hidden = [f.feature for f in verdict.features if f.feature not in cols]
    labels = {
        "model_name": verdict.model_name,
        "model_version": verdict.model_version,
        "severity": verdict.severity,
        "not_shown": f"constant in reference and window, tested, not drifted: {', '.join(hidden)}" if hidden else "",
    }
    metadata = {k: v for k, v in labels.items() if v}
    name = f"drift {verdict.model_name or ''} {verdict.model_version or ''}".strip()
    with warnings.catch_warnings():
        # Evidently's plots divide by zero on constant columns (correlations); harmless.
        warnings.simplefilter("ignore", RuntimeWarning)
        marked = [MeanValue(column=c, tests=[]) for c in markers]
        snapshot = Report([preset, *marked], include_tests=True).run(
            Dataset.from_pandas(_with_markers(current[cols], verdict), data_definition=definition),
            Dataset.from_pandas(_with_markers(reference[cols], verdict), data_definition=definition),
            timestamp=datetime.now(UTC),
            metadata={k: str(v) for k, v in metadata.items()},
            tags=snapshot_tags(verdict),
            name=name,
        )
    results = evidently_column_results(snapshot)
    for f in shown:
        method, _, drifted = results[f.feature]
        if (method, drifted) != (f.test, f.drifted):
            raise RuntimeError(
                f"Evidently's report disagrees with the verdict on {f.feature!r}: "
                f"{method} drifted={drifted}, expected {f.test} drifted={f.drifted}"
            )
    return snapshot


def _with_markers(frame: pd.DataFrame, verdict: DriftVerdict) -> pd.DataFrame:
    return pd.concat([frame.reset_index(drop=True), _markers(verdict, len(frame))], axis=1)


def evidently_column_results(snapshot: Snapshot) -> dict[str, tuple[str, float, bool]]:
    """Column → (verdict test, p-value, drifted) from the ``ValueDrift`` metrics and tests of a snapshot.

    The report's scores are ``evidence`` (-log10 p); the p-value is read back from them.
    """
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
            method = _VERDICT_TESTS.get(config["method"], config["method"])
            results[config["column"]] = (method, 10 ** -float(metric["value"]), metric["id"] in failed)
    return results


def evidently_dataset_drift(snapshot: Snapshot) -> bool:
    """Evidently's own dataset verdict (its ``DriftedColumnsCount`` test failed)."""
    data = snapshot.dict()
    ids = {m["id"] for m in data["metrics"] if m["config"].get("type", "").endswith(":DriftedColumnsCount")}
    return any(
        t["metric_config"]["metric_id"] in ids and str(getattr(t["status"], "value", t["status"])) == "FAIL"
        for t in data.get("tests", [])
    )


def save_report_html(snapshot: Snapshot, path: Path | str) -> Path:
    """Write Evidently's self-contained HTML report (a few MB)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(target))
    return target


# --- the workspace -----------------------------------------------------------------------------------


def add_to_workspace(settings: Settings, snapshot: Snapshot, model_name: str) -> str:
    """Add the snapshot to the Evidently workspace (``<state>/evidently``), project = model name.

    The project's dashboard is rebuilt with each snapshot, so its per-feature panel follows the
    features with the strongest evidence in the latest check.
    """
    workspace = Workspace.create(str(settings.state_dir / "evidently"))
    projects = workspace.search_project(model_name)
    project = projects[0] if projects else workspace.create_project(
        model_name, description=f"Drift of {model_name}'s production traffic (visionloop monitor)"
    )
    run_id = str(workspace.add_run(project.id, snapshot, include_data=False).id)
    refresh_dashboard(project, top_features(snapshot))
    return run_id


def top_features(snapshot: Snapshot, k: int = TOP_FEATURES) -> list[str]:
    """The ``k`` features with the strongest evidence (-log10 p) in a snapshot."""
    scores = {c: -math.log10(max(p, 10**-MAX_SCORE)) for c, (_, p, _) in evidently_column_results(snapshot).items()}
    return sorted(scores, key=lambda c: -scores[c])[:k]


def refresh_dashboard(project: Any, features: list[str]) -> None:
    """The dashboard: severity and model version over time, share of drifted features, the top features."""
    drifted = "evidently:metric_v2:DriftedColumnsCount"
    mean = "evidently:metric_v2:MeanValue"
    project.dashboard.clear_dashboard()
    project.dashboard.add_panel(
        bar_plot_panel(
            title="Severity of each check (0 none, 1 warning, 2 critical)",
            values=[PanelMetric(legend="severity", metric=mean, metric_labels={"column": SEVERITY_COLUMN})],
            size="half",
        )
    )
    project.dashboard.add_panel(
        line_plot_panel(
            title="Model version checked",
            values=[PanelMetric(legend="version", metric=mean, metric_labels={"column": VERSION_COLUMN})],
            size="half",
        )
    )
    project.dashboard.add_panel(
        line_plot_panel(
            title="Share of drifted features (of those shown)",
            values=[PanelMetric(legend="share", metric=drifted, metric_labels={"value_type": "share"})],
            size="half",
        )
    )
    project.dashboard.add_panel(
        line_plot_panel(
            title="Drifted features",
            values=[PanelMetric(legend="count", metric=drifted, metric_labels={"value_type": "count"})],
            size="half",
        )
    )
    project.dashboard.add_panel(
        line_plot_panel(
            title="Top features: evidence -log10(p) (drift above -log10(alpha / features))",
            values=[
                PanelMetric(legend=c, metric="evidently:metric_v2:ValueDrift", metric_labels={"column": c})
                for c in features
            ],
            size="full",
        )
    )
