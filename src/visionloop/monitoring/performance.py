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

**Slices** (``slice_report``): accuracy per class, per tertile bin of image statistics (dark / normal /
bright, …, cut at the model's reference profile) and per metadata value, with the flag rule of
``visionloop.monitoring.slices`` — the same code as the promotion gate's slice check.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from visionloop.contracts import Severity
from visionloop.monitoring.features import PROBABILITY_PREFIX
from visionloop.monitoring.slices import OVERALL, build_slice_frame, plot_slices, slice_metrics, wilson_interval
from visionloop.training.evaluate import Evaluation, evaluate_model, plot_confusion, plot_roc

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel

HEADLINE = ("accuracy", "macro_f1", "roc_auc_ovr", "ece")
DEFAULT_MIN_LABELS = 30
DEFAULT_LABEL_WINDOW = 500
# Columns of a prepared manifest / bundle test set that are not metadata to slice by.
NOT_METADATA = frozenset({"path", "label", "split", "sha256", "source_path", "abs_path"})


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
        return {
            "status": self.status,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "source": self.source,
            "n": self.n,
            "n_unusable": self.n_unusable,
            "message": self.message,
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
    params = settings.section("monitoring")
    min_labels = int(params.get("min_labels", DEFAULT_MIN_LABELS))
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
    threshold = float(params.get("degradation_threshold", 0.05))
    critical = float(params.get("degradation_critical", 0.15))
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
    import mlflow

    from visionloop.models.tracking import use_tracking

    experiment_id = use_tracking(settings, "monitoring_experiment")
    tags = {
        "visionloop.kind": "performance",
        "model_name": result.model_name,
        "model_version": result.model_version,
        "source": result.source[:5000],
        "degraded": str(result.degraded).lower(),
        "severity": result.severity,
    }
    metrics = {k: v for k, v in result.metrics.items() if np.isfinite(v)}
    metrics.update({f"training.{k}": _number(result.baseline.get(k)) for k in HEADLINE})
    for cls, scores in result.per_class.items():
        metrics.update({f"{name}_class_{cls}": float(scores[name]) for name in ("precision", "recall", "f1")})
    if result.drop is not None:
        metrics["accuracy_drop"] = result.drop
    metrics["n_unusable"] = float(result.n_unusable)
    run_name = f"performance {result.model_name} v{result.model_version}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for file in files.values():
            mlflow.log_artifact(str(file), artifact_path="performance")
        return run.info.run_id


# --- from the prediction log / from a labeled folder --------------------------------------------------


def labeled_predictions(
    settings: Settings, model: ServableModel, *, last_n: int | None = None, all_versions: bool = False
) -> pd.DataFrame:
    """The latest ``last_n`` predictions of the model (its version only, unless ``all_versions``) with a label."""
    from visionloop.store.predlog import PredictionLog

    prediction_log = PredictionLog(settings.db_url)
    try:
        frame = prediction_log.labeled()
    finally:
        prediction_log.dispose()
    keep = frame["model_name"] == model.name
    if not all_versions:
        keep &= frame["model_version"].astype(str) == str(model.version)
    frame = frame[keep]
    return frame.tail(last_n) if last_n is not None else frame


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
    window = last_n if last_n is not None else int(settings.section("monitoring").get("label_window", 500))
    frame = labeled_predictions(settings, model, last_n=window, all_versions=all_versions)
    evaluation, unusable = evaluation_from_log(frame, model.classes)
    result = assess(settings, model, evaluation, source="feedback", n_unusable=unusable)
    return _finish(settings, result, out_dir, log)


def performance_from_folder(
    settings: Settings, model: ServableModel, data: Path, *, out_dir: Path | None = None, log: bool = True
) -> PerformanceResult:
    """Score the model on a labeled folder, CSV manifest or prepared data set (``load_labeled``)."""
    labeled = load_labeled(settings, data, channels=int(model.config.get("in_channels", 1)))
    evaluation = evaluate_model(model, labeled.images, labeled.labels)
    return _finish(settings, assess(settings, model, evaluation, source=labeled.source), out_dir, log)


def _finish(settings: Settings, result: PerformanceResult, out_dir: Path | None, log: bool) -> PerformanceResult:
    if result.evaluation is None:
        return result
    if out_dir is None:
        from visionloop.monitoring.monitor import new_output_dir

        out_dir = new_output_dir(settings) / "performance"
    result.files = write_performance_outputs(result, out_dir)
    if log:
        result.mlflow_run_id = log_performance(settings, result, result.files)
    return result


@dataclass
class LabeledData:
    images: list[np.ndarray]
    labels: list[str]
    metadata: pd.DataFrame  # one row per image; the columns to slice by
    source: str


def load_labeled(settings: Settings, data: Path | None = None, *, channels: int = 1) -> LabeledData:
    """Labeled images from a prepared data set (its ``test`` split), a folder with a ``manifest.csv`` (such as
    a bundle's ``test_set``), a ``path,label[,meta…]`` CSV or a class-per-folder directory.

    Default: the project's prepared data (``data.prepared_dir``). Metadata = the manifest's other columns.
    Folders and CSVs pass the same checks as training data (``data.ingest``); refused files are left out.
    """
    from visionloop.data.ingest import ingest, load_image

    params = settings.section("data")
    path = settings.path(data) if data is not None else settings.path(params["prepared_dir"])
    manifest_path = path / "manifest.csv" if path.is_dir() else None
    if manifest_path is not None and manifest_path.exists():
        manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        source = str(path)
        if "split" in manifest.columns:
            manifest = manifest[manifest["split"] == "test"]
            source = f"{path} (test split)"
        images = [load_image(path / p) for p in manifest["path"]]
        metadata = manifest.drop(columns=[c for c in manifest.columns if c in NOT_METADATA])
        return LabeledData(images, manifest["label"].tolist(), metadata.reset_index(drop=True), source)
    if not path.exists():
        raise FileNotFoundError(f"no labeled data at {path}")
    images: list[np.ndarray] = []
    result = ingest(
        path,
        channels=channels,
        min_side=int(params.get("min_side", 8)),
        max_pixels=int(params["max_pixels"]),
        on_record=lambda _record, pixels: images.append(pixels),
    )
    metadata = pd.DataFrame([r.meta for r in result.records], columns=result.meta_columns)
    return LabeledData(images, [r.label for r in result.records], metadata, str(path))


# --- slices ------------------------------------------------------------------------------------------


def slice_report(
    settings: Settings,
    model: ServableModel,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    meta: pd.DataFrame | None = None,
    *,
    reference: pd.DataFrame | None = None,
    out_dir: Path | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Accuracy per slice (``slices.slice_metrics``) and its plot, for ``evaluate --slices`` and ``slices``.

    Slices: each class, the tertile bins of the image statistics named in ``registry.gate.slices.image_stats``
    (cut at ``reference``, the model's reference profile, when given — as the gate does — else at these
    images), and every column of ``meta``. The plot is written to ``out_dir/slices.png`` (default
    ``<state>/monitoring/<timestamp>/slices``); the table beside it as ``slices.csv``.
    """
    declared = settings.section("registry").get("gate", {}).get("slices") or {}
    stat_columns = list(declared.get("image_stats", ["brightness", "contrast", "sharpness"]))
    predicted = np.asarray(model.classes, dtype=object)[evaluate_model(model, list(images), list(labels)).y_pred]
    meta_columns = list(meta.columns) if meta is not None else []
    frame, slice_cols = build_slice_frame(
        list(images),
        [str(label) for label in labels],
        {"predicted": predicted.tolist()},
        stat_columns=stat_columns,
        reference=reference,
        metadata=meta.reset_index(drop=True) if meta is not None else None,
        metadata_columns=meta_columns,
    )
    table = slice_metrics(frame, label_col="label", pred_col="predicted", slice_cols=slice_cols)
    if out_dir is None:
        from visionloop.monitoring.monitor import new_output_dir

        out_dir = new_output_dir(settings) / "slices"
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "slices.csv", index=False)
    plot = plot_slices(table, out_dir / "slices.png", title=f"{model.name} v{model.version}: accuracy per slice")
    return table, plot


def log_slice_report(settings: Settings, model: ServableModel, table: pd.DataFrame, plot: Path, source: str) -> str:
    """An MLflow run in the monitoring experiment: accuracy per slice, the flagged slices, the table and plot."""
    import mlflow

    from visionloop.models.tracking import use_tracking

    experiment_id = use_tracking(settings, "monitoring_experiment")
    flagged = table[table["flagged"]]
    tags = {
        "visionloop.kind": "slices",
        "model_name": model.name,
        "model_version": str(model.version),
        "source": source[:5000],
        "flagged_slices": ",".join(f"{c}={s}" for c, s in zip(flagged["column"], flagged["slice"], strict=True))[:5000],
    }
    metrics = {"n_flagged": float(len(flagged))}
    for row in table.itertuples():
        key = "accuracy" if row.column == OVERALL else f"accuracy.{row.column}.{row.slice}"
        if np.isfinite(row.accuracy):
            metrics[_metric_key(key)] = float(row.accuracy)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"slices {model.name} v{model.version}",
                          tags=tags) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(plot), artifact_path="slices")
        csv = plot.with_name("slices.csv")
        if csv.exists():
            mlflow.log_artifact(str(csv), artifact_path="slices")
        return run.info.run_id


def _metric_key(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / :`` and spaces."""
    return "".join(ch if ch.isalnum() or ch in "_-./: " else "_" for ch in key)[:250]
