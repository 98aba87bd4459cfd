"""Retraining on new labeled data by transfer learning from the champion.

Steps (each a Prefect task in ``tasks/retrain.py``): collect the production images labeled since
the last data version → snapshot, DVC-hashed (a new data version) → validate & split →
train from the champion's weights (``retrain.strategy``) → evaluate → register → the promotion gate.
Nothing touches the champion before the gate, so a failure at any step leaves it serving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import DataVersion
from visionloop.data.prepare import prepare_from_settings
from visionloop.data.snapshot import Snapshot, create_snapshot, latest_snapshot
from visionloop.promotion.promote import RegisteredVersion, register_run
from visionloop.store.predlog import PredictionLog
from visionloop.training.evaluate import run_evaluation
from visionloop.training.train import TrainResult, train


@dataclass
class RetrainWorkspace:
    """Where one retrain writes: its own prepared data and model folder (not the DVC stage outputs)."""

    root: Path
    prepared: Path = field(init=False)
    model: Path = field(init=False)
    metrics: Path = field(init=False)
    plots: Path = field(init=False)

    def __post_init__(self) -> None:
        self.prepared, self.model = self.root / "prepared", self.root / "model"
        self.metrics, self.plots = self.root / "metrics.json", self.root / "plots"


def new_labeled_production(settings: Settings) -> pd.DataFrame:
    """Production images with feedback labels not yet in a data version (path,label,prediction_id)."""
    prediction_log = PredictionLog(settings.db_url)
    try:
        labeled = prediction_log.labeled()
    finally:
        prediction_log.dispose()
    labeled = labeled[labeled["image_path"].notna() & labeled["image_path"].map(lambda p: bool(p) and Path(p).exists())]
    latest = latest_snapshot(settings)
    if latest is not None:
        seen = pd.read_csv(latest, dtype=str, keep_default_na=False)
        if "prediction_id" in seen.columns:
            labeled = labeled[~labeled["id"].isin(set(seen["prediction_id"]))]
    return pd.DataFrame({
        "path": labeled["image_path"].astype(str).tolist(),
        "label": labeled["feedback_label"].astype(str).tolist(),
        "prediction_id": labeled["id"].astype(str).tolist(),
    })


def snapshot_data(settings: Settings, additions: pd.DataFrame, reason: str = "retrain") -> Snapshot:
    """A new DVC data version: the current training data plus the additions."""
    return create_snapshot(settings, additions=additions, reason=reason)


def prepare_snapshot(settings: Settings, manifest: Path, workspace: RetrainWorkspace) -> dict[str, Any]:
    """Validate and split the snapshot into the retrain's own prepared folder, with ``data``'s limits."""
    return prepare_from_settings(settings, manifest, workspace.prepared).report


def retrain_settings(settings: Settings) -> Settings:
    """Training params for a retrain: ``retrain.epochs`` and ``retrain.origin_weights`` over ``train``."""
    retrain = settings.params.retrain
    return settings.with_overrides({"train": {"epochs": retrain.epochs, "origin_weights": retrain.origin_weights}})


def train_challenger(
    settings: Settings, workspace: RetrainWorkspace, data_version: DataVersion, base: str, trigger: str
) -> TrainResult:
    """Transfer learning from ``base`` (the champion) with ``retrain.strategy``, into the workspace."""
    strategy = settings.params.retrain.strategy
    return train(retrain_settings(settings), prepared_dir=workspace.prepared, out_dir=workspace.model, base=base,
                 strategy=strategy, data_version=data_version, trigger=trigger, run_name=f"retrain {strategy}")


def evaluate_challenger(settings: Settings, workspace: RetrainWorkspace) -> dict[str, float]:
    """The challenger's test metrics on the new data version's test split."""
    return run_evaluation(settings, workspace.model, workspace.prepared, workspace.metrics, workspace.plots).metrics()


def register_challenger(
    settings: Settings, workspace: RetrainWorkspace, metrics: dict[str, float], trigger: str
) -> RegisteredVersion:
    """Register the challenger's run as a new version (alias ``challenger``); the gate decides the rest."""
    run_id = json.loads((workspace.model / "run.json").read_text())["run_id"]
    return register_run(settings, run_id, metrics, trigger=trigger)
