"""Performance once labels arrive, and data-slice evaluation: the training-time metrics, in production.

**Performance.** The predictions that received a ``/feedback`` label (``PredictionLog.labeled``), or a
labeled folder, are scored with the same ``evaluate.Evaluation`` as the test split at training time —
accuracy, per-class precision/recall/F1, the confusion matrix, one-vs-rest ROC AUC with the curves,
expected calibration error — from the probabilities the model gave (the logged ``prob_*`` columns), and
set beside the version's training-time test metrics (``bundle/metrics.json``).

**Degradation** (the alert): the accuracy dropped by more than ``monitoring.degradation_threshold`` from
the training-time accuracy *and* the drop is not chance — the upper end of the 95 % Wilson interval of
the production accuracy lies below the training-time accuracy (a handful of labels can't raise it).
Severity: ``critical`` when the drop reaches ``monitoring.degradation_critical``, else ``warning``.
Fewer than ``monitoring.min_labels`` labels: "not enough labels", nothing is judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import Severity
from visionloop.models.bundle import ServableModel
from visionloop.monitoring.features import PROBABILITY_PREFIX
from visionloop.monitoring.labeled import labeled_predictions, load_labeled
from visionloop.monitoring.outputs import log_check_run, new_output_dir
from visionloop.monitoring.slices import wilson_interval
from visionloop.training.evaluate import Evaluation, evaluate_model, plot_confusion, plot_roc

HEADLINE = ("accuracy", "macro_f1", "roc_auc_ovr", "ece")


@dataclass
class PerformanceResult:
    """Metrics on labeled data beside the training-time ones, and whether the model degraded."""

    status: Literal["checked", "not_enough_labels"]
    model_name: str
    model_version: str
    source: str  # "feedback" or the labeled folder
    n: int
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)  # training-time test metrics (bundle/metrics.json)
    accuracy_interval: tuple[float, float] | None = None  # 95 % Wilson interval
    drop: float | None = None  # training-time accuracy − production accuracy
    degraded: bool = False
    severity: Severity = "none"
    n_unusable: int = 0  # labeled rows not scored: label unknown to the model or probabilities missing
    evaluation: Evaluation | None = None  # not part of to_dict
    files: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def comparison(self) -> pd.DataFrame:
        """metric, training, production, delta: the headline metrics and each class's F1."""
        rows = [
            {"metric": k, "training": _number(self.baseline.get(k)), "production": self.metrics.get(k, np.nan)}
            for k in HEADLINE
        ]
        trained = self.baseline.get("per_class", {})
        rows += [
            {"metric": f"f1_class_{c}", "training": _number(trained.get(c, {}).get("f1")), "production": s["f1"]}
            for c, s in self.per_class.items()
            if s["support"] > 0
        ]
        table = pd.DataFrame(rows, columns=["metric", "training", "production"])
        table["delta"] = table["production"] - table["training"]
        return table

    def summary(self) -> dict[str, Any]:
        """What an alert needs: accuracy now and at training time, the drop, how many labels."""
        return {
            "accuracy": _rounded(self.metrics.get("accuracy")),
            "training_accuracy": _rounded(self.baseline.get("accuracy")),
            "drop": _rounded(self.drop),
            "accuracy_interval": [_rounded(v) for v in self.accuracy_interval] if self.accuracy_interval else None,
            "n_labeled": self.n,
            "degraded": self.degraded,
            "severity": self.severity,
            "source": self.source,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: for ``--json``, ``performance.json`` and the monitor flow's result."""
        plain = ("status", "model_name", "model_version", "source", "n", "n_unusable", "message")
        return {
            **{key: getattr(self, key) for key in plain},
            "metrics": {k: _rounded(v) for k, v in self.metrics.items()},
            "per_class": self.per_class,
            "baseline": {k: _rounded(self.baseline.get(k)) for k in HEADLINE},
            "summary": self.summary(),
            "files": {k: str(v) for k, v in self.files.items()},
            "mlflow_run_id": self.mlflow_run_id,
        }


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _rounded(value: Any) -> float | None:
    number = _number(value)
    return round(number, 6) if np.isfinite(number) else None


# --- scoring -----------------------------------------------------------------------------------------


def evaluation_from_log(frame: pd.DataFrame, classes: list[str]) -> tuple[Evaluation, int]:
    """An ``Evaluation`` from labeled log rows: ``feedback_label`` against the logged ``prob_<class>`` columns.

    Rows whose label the model does not know, or whose probabilities are missing, are left out;
    their number is returned beside the evaluation.
    """
    columns = [f"{PROBABILITY_PREFIX}{c}" for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    if frame.empty or any(c not in frame.columns for c in columns):
        return Evaluation(list(classes), np.zeros(0, int), np.zeros((0, len(classes)))), len(frame)
    probabilities = frame[columns].to_numpy(dtype=float)
    labels = frame["feedback_label"].astype(str)
    usable = labels.isin(index.keys()).to_numpy() & np.isfinite(probabilities).all(axis=1)
    y_true = np.array([index[label] for label in labels[usable]], dtype=int)
    return Evaluation(list(classes), y_true, probabilities[usable]), int((~usable).sum())


def degradation(
    training_accuracy: float | None, evaluation: Evaluation, threshold: float, critical: float, confidence: float = 0.95
) -> tuple[bool, Severity, float | None, tuple[float, float]]:
    """(degraded, severity, drop, Wilson interval of the accuracy): the rule in the module docstring."""
    n = len(evaluation.y_true)
    correct = int((evaluation.y_pred == evaluation.y_true).sum())
    interval = wilson_interval(correct, n, confidence)
    if training_accuracy is None or not np.isfinite(training_accuracy) or n == 0:
        return False, "none", None, interval
    drop = float(training_accuracy - correct / n)
    degraded = bool(drop > threshold and interval[1] < training_accuracy)
    if not degraded:
        return False, "none", drop, interval
    return True, "critical" if drop >= critical else "warning", drop, interval


def assess(
    settings: Settings, model: ServableModel, evaluation: Evaluation, *, source: str, n_unusable: int = 0
) -> PerformanceResult:
    """Score ``evaluation`` against the model's training-time metrics; too few labels are reported, not judged."""
    params = settings.params.monitoring
    min_labels = params.min_labels
    n = len(evaluation.y_true)
    base = {
        "model_name": model.name,
        "model_version": str(model.version),
        "source": source,
        "n": n,
        "n_unusable": n_unusable,
        "baseline": dict(model.metrics),
    }
    if n < min_labels:
        return PerformanceResult(
            status="not_enough_labels",
            message=f"not enough labels: {n} labeled prediction(s) of {model.name} v{model.version} "
            f"({source}), at least {min_labels} needed (monitoring.min_labels); performance not judged",
            **base,
        )
    threshold = params.degradation_threshold
    critical = params.degradation_critical
    training = model.metrics.get("accuracy")
    degraded, severity, drop, interval = degradation(
        float(training) if isinstance(training, int | float) else None, evaluation, threshold, critical
    )
    metrics = evaluation.metrics()
    if drop is None:
        message = f"accuracy {metrics['accuracy']:.3f} on {n} labels; no training-time accuracy to compare with"
    else:
        message = (
            f"accuracy {metrics['accuracy']:.3f} on {n} labels (95 % CI {interval[0]:.3f}–{interval[1]:.3f}) vs "
            f"{float(training):.3f} at training time: drop {drop:+.3f}, "
            + (f"DEGRADED ({severity})" if degraded else f"within the threshold of {threshold}")
        )
    return PerformanceResult(
        status="checked",
        message=message,
        metrics=metrics,
        per_class=evaluation.per_class(),
        accuracy_interval=interval,
        drop=drop,
        degraded=degraded,
        severity=severity,
        evaluation=evaluation,
        **base,
    )


# --- outputs -----------------------------------------------------------------------------------------


def write_performance_outputs(result: PerformanceResult, out_dir: Path) -> dict[str, Path]:
    """performance.json (metrics, comparison, degradation), the confusion matrix and the ROC curves."""
    if result.evaluation is None:
        raise ValueError(f"nothing to write: {result.message}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"performance": out_dir / "performance.json"}
    document = {**result.to_dict(), "comparison": result.comparison().replace({np.nan: None}).to_dict("records")}
    files["performance"].write_text(json.dumps(document, indent=2) + "\n")
    title = f"{result.model_name} v{result.model_version} on {result.n} labels"
    files["confusion"] = plot_confusion(result.evaluation, out_dir / "confusion_matrix.png", title=title)
    files["roc"] = plot_roc(result.evaluation, out_dir / "roc_curves.png", title=f"ROC curves, {title}")
    return files


def log_performance(settings: Settings, result: PerformanceResult, files: dict[str, Path]) -> str:
    """An MLflow run in the monitoring experiment: the metrics, their training-time values, the plots."""
    metrics = dict(result.metrics)
    metrics.update({f"training.{k}": _number(result.baseline.get(k)) for k in HEADLINE})
    for cls, scores in result.per_class.items():
        metrics.update({f"{name}_class_{cls}": float(scores[name]) for name in ("precision", "recall", "f1")})
    if result.drop is not None:
        metrics["accuracy_drop"] = result.drop
    metrics["n_unusable"] = float(result.n_unusable)
    tags = {"source": result.source[:5000], "degraded": str(result.degraded).lower(), "severity": result.severity}
    model = (result.model_name, result.model_version)
    return log_check_run(settings, "performance", model, tags=tags, metrics=metrics, files=files.values())


# --- the checks: the labeled production predictions, or a labeled folder ------------------------------


def monitor_performance(
    settings: Settings,
    model: ServableModel,
    *,
    out_dir: Path | None = None,
    last_n: int | None = None,
    all_versions: bool = False,
    log: bool = True,
) -> PerformanceResult:
    """Score the model's labeled production predictions (the latest ``monitoring.label_window``).

    When there are enough labels: writes the outputs (``out_dir``, default a new
    ``<state>/monitoring/<timestamp>/performance``) and, with ``log``, an MLflow run.
    """
    window = last_n if last_n is not None else settings.params.monitoring.label_window
    frame = labeled_predictions(settings, model, last_n=window, all_versions=all_versions)
    evaluation, unusable = evaluation_from_log(frame, model.classes)
    result = assess(settings, model, evaluation, source="feedback", n_unusable=unusable)
    return _finish(settings, result, out_dir, log)


def performance_from_folder(
    settings: Settings, model: ServableModel, data: Path, *, out_dir: Path | None = None, log: bool = True
) -> PerformanceResult:
    """Score the model on a labeled folder, CSV manifest or prepared data set (``load_labeled``)."""
    labeled = load_labeled(settings, data, channels=model.channels)
    evaluation = evaluate_model(model, labeled.images, labeled.labels)
    return _finish(settings, assess(settings, model, evaluation, source=labeled.source), out_dir, log)


def _finish(settings: Settings, result: PerformanceResult, out_dir: Path | None, log: bool) -> PerformanceResult:
    """Write (and log) a judged result; one with too few labels has nothing to show and is returned as is."""
    if result.evaluation is None:
        return result
    if out_dir is None:
        out_dir = new_output_dir(settings) / "performance"
    result.files = write_performance_outputs(result, out_dir)
    if log:
        result.mlflow_run_id = log_performance(settings, result, result.files)
    return result
