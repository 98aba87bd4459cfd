"""Classification metrics, plots and the DVC/MLflow outputs of an evaluation.

One implementation serves the ``evaluate`` stage, the promotion gate and performance monitoring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

from visionloop.data.manifest import read_manifest
from visionloop.models.bundle import ServableModel
from visionloop.models.tracking import log_run
from visionloop.training.datamodule import load_images


@dataclass
class Evaluation:
    classes: list[str]
    y_true: np.ndarray  # class indices
    probabilities: np.ndarray  # N×C

    @property
    def y_pred(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, labels=range(len(self.classes)))

    def per_class(self) -> dict[str, dict[str, float]]:
        precision, recall, f1, support = precision_recall_fscore_support(
            self.y_true, self.y_pred, labels=range(len(self.classes)), zero_division=0
        )
        return {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(self.classes, precision, recall, f1, support, strict=True)
        }

    def roc_auc(self) -> float:
        """Macro one-vs-rest ROC AUC over the classes that have both positives and negatives."""
        aucs = [
            roc_auc_score(self.y_true == k, self.probabilities[:, k])
            for k in range(len(self.classes))
            if 0 < (self.y_true == k).sum() < len(self.y_true)
        ]
        return float(np.mean(aucs)) if aucs else float("nan")

    def metrics(self) -> dict[str, float]:
        per_class = self.per_class()
        present = [v["f1"] for v in per_class.values() if v["support"] > 0]
        return {
            "accuracy": float((self.y_pred == self.y_true).mean()) if len(self.y_true) else float("nan"),
            "macro_f1": float(np.mean(present)) if present else float("nan"),
            "roc_auc_ovr": self.roc_auc(),
            "ece": expected_calibration_error(self.y_true, self.probabilities),
            "n": float(len(self.y_true)),
        }

    def summary(self) -> dict[str, Any]:
        """Everything a reader of metrics.json needs: headline metrics and per-class scores."""
        return {**self.metrics(), "per_class": self.per_class()}


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """ECE: gap between confidence and accuracy, weighted over equal-width confidence bins."""
    if len(y_true) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def evaluate_model(
    model: ServableModel, images: list[np.ndarray], labels: list[str], batch_size: int = 256
) -> Evaluation:
    """Predict in batches through the model's own eval pipeline and score against ``labels``."""
    index = {c: i for i, c in enumerate(model.classes)}
    unknown = sorted({str(label) for label in labels} - index.keys())
    if unknown:
        raise ValueError(f"labels not known to the model: {unknown}")
    chunks = [model.predict(images[i : i + batch_size]).probabilities for i in range(0, len(images), batch_size)]
    probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(model.classes)), np.float32)
    y_true = np.array([index[str(label)] for label in labels], dtype=int)
    return Evaluation(list(model.classes), y_true, probabilities)


def write_outputs(evaluation: Evaluation, metrics_path: Path, plots_dir: Path) -> dict[str, Path]:
    """metrics.json + DVC plot data (confusion, ROC) + PNG figures; returns the written files."""
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(evaluation.summary(), indent=2) + "\n")
    classes = np.array(evaluation.classes)
    confusion_rows = pd.DataFrame({"actual": classes[evaluation.y_true], "predicted": classes[evaluation.y_pred]})
    confusion_rows.to_csv(plots_dir / "confusion.csv", index=False)
    roc_frame(evaluation).to_csv(plots_dir / "roc.csv", index=False)
    files = {"metrics": metrics_path, "confusion_csv": plots_dir / "confusion.csv", "roc_csv": plots_dir / "roc.csv"}
    files["confusion_png"] = plot_confusion(evaluation, plots_dir / "confusion_matrix.png")
    files["roc_png"] = plot_roc(evaluation, plots_dir / "roc_curves.png")
    return files


def roc_frame(evaluation: Evaluation) -> pd.DataFrame:
    """One-vs-rest ROC points per class (long format, for ``dvc plots``)."""
    frames = []
    for k, name in enumerate(evaluation.classes):
        positives = evaluation.y_true == k
        if 0 < positives.sum() < len(positives):
            fpr, tpr, _ = roc_curve(positives, evaluation.probabilities[:, k])
            frames.append(pd.DataFrame({"class": name, "fpr": fpr.round(5), "tpr": tpr.round(5)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["class", "fpr", "tpr"])


def plot_confusion(evaluation: Evaluation, path: Path, title: str = "Confusion matrix") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = evaluation.confusion
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(evaluation.classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=evaluation.classes, yticklabels=evaluation.classes,
           xlabel="predicted", ylabel="actual", title=title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(evaluation: Evaluation, path: Path, title: str = "ROC curves (one-vs-rest)") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, points in roc_frame(evaluation).groupby("class", sort=False):
        ax.plot(points["fpr"], points["tpr"], lw=1, label=str(name))
    ax.plot([0, 1], [0, 1], "k--", lw=0.7)
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"{title}\nmacro AUC {evaluation.roc_auc():.4f}")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_evaluation(
    settings, model_dir: Path, prepared_dir: Path, metrics_path: Path, plots_dir: Path, split: str = "test"
) -> Evaluation:
    """The ``evaluate`` stage: score the trained bundle on a split, write DVC outputs, log to the run."""

    model = ServableModel.from_dir(model_dir)
    manifest = read_manifest(prepared_dir)
    rows = manifest[manifest["split"] == split]
    evaluation = evaluate_model(model, load_images(rows["abs_path"].tolist()), rows["label"].astype(str).tolist())
    files = write_outputs(evaluation, metrics_path, plots_dir)
    run_file = model_dir / "run.json"
    if run_file.exists():
        metrics = {f"{split}/{k}": v for k, v in evaluation.metrics().items()}
        metrics.update({f"{split}/f1_class_{cls}": scores["f1"] for cls, scores in evaluation.per_class().items()})
        plots = ("metrics", "confusion_png", "roc_png", "confusion_csv", "roc_csv")
        outputs = [(files[key], "evaluation") for key in plots]
        log_run(settings, run_id=json.loads(run_file.read_text())["run_id"], metrics=metrics,
                files=[*outputs, (metrics_path, "bundle")])
    return evaluation
