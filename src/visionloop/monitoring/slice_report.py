"""Accuracy per data slice of a labeled set, with its plot and MLflow run: ``evaluate --slices`` and ``slices``.

Slices: each class, the tertile bins of the image statistics named in ``registry.gate.slices.image_stats``
(dark / normal / bright, …) and every metadata column. The table and the flag rule are
``visionloop.monitoring.slices``'s — the same code as the promotion gate's slice check — so a slice
flagged here is one the gate would judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.monitoring.outputs import log_check_run, new_output_dir
from visionloop.monitoring.slices import OVERALL, build_slice_frame, plot_slices, slice_metrics
from visionloop.training.evaluate import evaluate_model


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
    """Accuracy per slice (``slices.slice_metrics``) and its plot.

    The image-statistic bins are cut at ``reference``, the model's reference profile, when given — as the
    gate does — else at these images. The plot is written to ``out_dir/slices.png`` (default
    ``<state>/monitoring/<timestamp>/slices``); the table beside it as ``slices.csv``.
    """
    predicted = np.asarray(model.classes, dtype=object)[evaluate_model(model, list(images), list(labels)).y_pred]
    frame, slice_cols = build_slice_frame(
        list(images),
        [str(label) for label in labels],
        {"predicted": predicted.tolist()},
        stat_columns=list(settings.params.registry.gate.slices.image_stats),
        reference=reference,
        metadata=meta.reset_index(drop=True) if meta is not None else None,
        metadata_columns=list(meta.columns) if meta is not None else [],
    )
    table = slice_metrics(frame, label_col="label", pred_col="predicted", slice_cols=slice_cols)
    if out_dir is None:
        out_dir = new_output_dir(settings) / "slices"
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "slices.csv", index=False)
    plot = plot_slices(table, out_dir / "slices.png", title=f"{model.name} v{model.version}: accuracy per slice")
    return table, plot


def log_slice_report(settings: Settings, model: ServableModel, table: pd.DataFrame, plot: Path, source: str) -> str:
    """An MLflow run in the monitoring experiment: accuracy per slice, the flagged slices, the table and plot."""
    flagged = table[table["flagged"]]
    names = ",".join(f"{c}={s}" for c, s in zip(flagged["column"], flagged["slice"], strict=True))
    metrics = {"n_flagged": float(len(flagged))}
    for row in table.itertuples():
        key = "accuracy" if row.column == OVERALL else f"accuracy.{row.column}.{row.slice}"
        metrics[_metric_key(key)] = float(row.accuracy)
    csv = plot.with_name("slices.csv")
    tags = {"source": source[:5000], "flagged_slices": names[:5000]}
    files = [plot, csv] if csv.exists() else [plot]
    return log_check_run(settings, "slices", (model.name, str(model.version)), tags=tags, metrics=metrics, files=files)


def _metric_key(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / :`` and spaces."""
    return "".join(ch if ch.isalnum() or ch in "_-./: " else "_" for ch in key)[:250]
