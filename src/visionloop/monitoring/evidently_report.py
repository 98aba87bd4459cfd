"""Evidently glue: the drift check as an Evidently report, its HTML, and the workspace that shows drift over time.

``check_drift`` runs Evidently's ``DataDriftPreset`` with the project's own tests and Bonferroni thresholds
(``visionloop.monitoring.drift``), so the report a person opens shows exactly the verdict the monitor acts
on; the tests are registered with Evidently by name. ``add_to_workspace`` files the snapshot in the
workspace ``<state>/evidently`` (one project per model name) for ``evidently ui --workspace <state>/evidently``.
"""

from __future__ import annotations

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
    TEST_FUNCTIONS,
    DriftThresholds,
    clean_values,
    feature_test,
    is_categorical,
    make_verdict,
    plan_tests,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # Evidently's UI imports deprecated Litestar APIs
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.report import Snapshot
    from evidently.legacy.calculations.stattests.registry import StatTest, _registered_stat_tests, register_stattest
    from evidently.legacy.core import ColumnType
    from evidently.presets import DataDriftPreset
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel
    from evidently.ui.workspace import Workspace


def _register_evidently_tests() -> None:
    """Make the project's tests known to Evidently by name (idempotent)."""

    def wrap(test: str):
        def run(reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
            p_value = TEST_FUNCTIONS[test](clean_values(reference), clean_values(current))[1]
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
    thresholds: DriftThresholds,
    *,
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
    _register_evidently_tests()
    cols, tests, threshold = plan_tests(reference, current, columns, thresholds.alpha)
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
    labels = {"model_name": model_name, "window_start": window_start, "window_end": window_end}
    verdict = make_verdict(
        features,
        thresholds,
        n_reference=len(reference),
        n_current=len(current),
        model_version=None if model_version is None else str(model_version),
        **labels,
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


def save_report_html(snapshot: Snapshot, path: Path | str) -> Path:
    """Write Evidently's self-contained HTML report (a few MB)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(target))
    return target


# --- the workspace -----------------------------------------------------------------------------------


def add_to_workspace(settings: Settings, snapshot: Snapshot, model_name: str) -> str:
    """Add the snapshot to the Evidently workspace (``<state>/evidently``), project = model name."""
    workspace = Workspace.create(str(settings.state_dir / "evidently"))
    projects = workspace.search_project(model_name)
    project = projects[0] if projects else _create_project(workspace, model_name)
    return str(workspace.add_run(project.id, snapshot, include_data=False).id)


def _create_project(workspace: Workspace, name: str) -> Any:
    """A project per model with a dashboard of drift over time."""
    project = workspace.create_project(name, description=f"Drift of {name}'s production traffic (visionloop monitor)")
    drifted = "evidently:metric_v2:DriftedColumnsCount"
    project.dashboard.add_panel(
        line_plot_panel(
            title="Share of drifted features",
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
    project.save()
    return project
