"""Retraining on new labeled data by transfer learning from the champion.

Steps (each a Prefect task in ``tasks/retrain.py``): collect the production images labeled since
the last data version → snapshot + ``dvc add`` (a new data version) → validate & split →
train from the champion's weights (``retrain.strategy``) → evaluate → register → the promotion gate.
Nothing touches the champion before the gate, so a failure at any step leaves it serving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from visionloop.config import Settings


@dataclass
class RetrainWorkspace:
    """Where one retrain writes: its own prepared data and model folder (not the DVC stage outputs)."""

    root: Path

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def new_labeled_production(settings: Settings) -> pd.DataFrame:
    """Production images with feedback labels not yet in a data version (path,label,prediction_id)."""
    from visionloop.data.snapshot import latest_snapshot
    from visionloop.store.predlog import PredictionLog

    labeled = PredictionLog(settings.db_url).labeled()
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


def snapshot_data(settings: Settings, additions: pd.DataFrame, reason: str = "retrain"):
    """A new DVC data version: the current training data plus the additions."""
    from visionloop.data.snapshot import create_snapshot

    return create_snapshot(settings, additions=additions, reason=reason)


def prepare_snapshot(settings: Settings, manifest: Path, workspace: RetrainWorkspace) -> dict[str, Any]:
    from visionloop.data.ingest import prepare

    data = settings.section("data")
    prepared = prepare(
        manifest, workspace.prepared, channels=int(data["channels"]), min_side=int(data["min_side"]),
        max_pixels=int(data["max_pixels"]), val_fraction=float(data["val_fraction"]),
        test_fraction=float(data["test_fraction"]), seed=settings.seed,
    )
    return prepared.report


def retrain_settings(settings: Settings) -> Settings:
    """Training params for a retrain: ``retrain.epochs`` and ``retrain.origin_weights`` over ``train``."""
    retrain = settings.section("retrain")
    overrides: dict[str, Any] = {"epochs": int(retrain.get("epochs", settings.section("train")["epochs"]))}
    if "origin_weights" in retrain:
        overrides["origin_weights"] = retrain["origin_weights"]
    return settings.with_overrides({"train": overrides})


def train_challenger(settings: Settings, workspace: RetrainWorkspace, data_version, base: str, trigger: str):
    from visionloop.training.train import train

    strategy = settings.section("retrain").get("strategy", "fine_tuning")
    return train(retrain_settings(settings), prepared_dir=workspace.prepared, out_dir=workspace.model, base=base,
                 strategy=strategy, data_version=data_version, trigger=trigger, run_name=f"retrain-{strategy}")


def evaluate_challenger(settings: Settings, workspace: RetrainWorkspace) -> dict[str, float]:
    from visionloop.training.evaluate import run_evaluation

    return run_evaluation(settings, workspace.model, workspace.prepared, workspace.metrics, workspace.plots).metrics()


def register_challenger(settings: Settings, workspace: RetrainWorkspace, metrics: dict[str, float], trigger: str):
    from visionloop.promotion.registry import register_run

    run_id = json.loads((workspace.model / "run.json").read_text())["run_id"]
    return register_run(settings, run_id, metrics, trigger=trigger)
