"""The training pipeline's steps, with their inputs and outputs taken from ``params.yaml``.

Each function is one DVC stage (``dvc.yaml`` runs it through the CLI) and one Prefect task
(``tasks/training.py``): a single implementation of each step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.data.contours import write_contours
from visionloop.data.digits import clear_data_dir, import_digits
from visionloop.data.manifest import metadata_columns, read_manifest
from visionloop.data.prepare import prepare_from_settings
from visionloop.data.shapes import write_shapes

# The model steps import torch, Lightning and MLflow inside themselves: the `data import` and `data prepare`
# stages (a `visionloop` process each under `dvc repro`) need none of them (~75 % of this module's import time).

# The generated data sets `data import` can write besides the embedded digits (data.dataset).
GENERATED = {"shapes": write_shapes, "contours": write_contours}
MODEL_DIR = "models"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "reports/plots"
REGISTRATION_FILE = "reports/registration.json"


def import_step(settings: Settings, dataset: str | None = None, out_dir: Path | None = None) -> int:
    """Write an embedded data set to ``data.raw_dir`` (or ``out_dir``); returns the number of images written.

    ``dataset`` (default ``data.dataset``): ``digits`` (scikit-learn's real digits, PNGs) or a generated
    RGB set, ``shapes`` or ``contours`` (``data.generated_images`` JPEGs and a ``manifest.csv`` whose
    condition columns are slices; seeded by ``seed``).
    """

    data = settings.params.data
    name = dataset or data.dataset
    if name != "digits" and name not in GENERATED:
        raise ValueError(f"unknown data set {name!r}; one of digits, {', '.join(GENERATED)}")
    target = out_dir or settings.path(data.raw_dir)
    if name == "digits":
        return import_digits(target, data.image_size)
    clear_data_dir(target)
    return GENERATED[name](target, data.generated_images, settings.seed)


def prepare_step(settings: Settings):
    """Validate, canonicalise and split the source images; quarantine what is bad."""

    return prepare_from_settings(settings)


def train_step(settings: Settings, trigger: str = "cli", **kwargs: Any):
    from visionloop.training.train import train

    return train(settings, out_dir=settings.path(MODEL_DIR), trigger=trigger, **kwargs)


def evaluate_step(settings: Settings, model_dir: Path | None = None):
    from visionloop.training.evaluate import run_evaluation

    return run_evaluation(
        settings,
        model_dir or settings.path(MODEL_DIR),
        settings.path(settings.params.data.prepared_dir),
        settings.path(METRICS_FILE),
        settings.path(PLOTS_DIR),
    )


def slices_step(settings: Settings, model_dir: Path | None = None) -> tuple[Any, Path]:
    """Accuracy per slice of the trained model on the test split (`evaluate --slices`), logged to its run."""
    from visionloop.models.bundle import ServableModel
    from visionloop.models.tracking import log_run
    from visionloop.monitoring.slice_report import slice_report
    from visionloop.training.datamodule import load_images

    model_dir = model_dir or settings.path(MODEL_DIR)
    model = ServableModel.from_dir(model_dir, name=settings.model_name, version="trained")
    manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    meta = test[metadata_columns(test.columns)]
    reference = pd.read_parquet(model_dir / BUNDLE_FILES["reference_profile"])
    table, plot = slice_report(settings, model, load_images(test["abs_path"].tolist()), test["label"].tolist(),
                               meta if len(meta.columns) else None, reference=reference,
                               out_dir=settings.path(PLOTS_DIR) / "slices")
    run_id = json.loads((model_dir / "run.json").read_text())["run_id"]
    log_run(settings, run_id=run_id, metrics={"test/n_flagged_slices": float(table["flagged"].sum())},
            files=[(plot.parent, "evaluation/slices")])
    return table, plot


def register_step(settings: Settings, trigger: str = "cli", model_dir: Path | None = None) -> dict[str, Any]:
    """Register the trained run's model; the first good one becomes champion."""
    from visionloop.promotion.promote import register_run

    run = json.loads(((model_dir or settings.path(MODEL_DIR)) / "run.json").read_text())
    metrics = json.loads(settings.path(METRICS_FILE).read_text())
    headline = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    registered = register_run(settings, run["run_id"], headline, trigger=trigger)
    record = {"run_id": run["run_id"], "model_name": settings.model_name, "version": str(registered.version),
              "aliases": list(registered.aliases)}
    path = settings.path(REGISTRATION_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
