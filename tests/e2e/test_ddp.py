"""Training with Lightning DDP on 2 CPU processes (gloo): the fit is split, the run and the bundle happen once."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from mlflow import MlflowClient

from visionloop.config import Settings
from visionloop.data.manifest import read_manifest
from visionloop.training import pipeline
from visionloop.training.datamodule import stratified_subset

BATCH = 256  # over half the subset's train images and under all of them: the step count shows the split
FRACTION = 0.3


def test_two_process_ddp_trains_once_on_half_the_batches_each(make_project: Callable[..., Path]) -> None:
    settings = Settings.load(make_project({"train": {"epochs": 1, "devices": 2, "batch_size": BATCH,
                                                     "limit_train_fraction": FRACTION}}))
    pipeline.import_step(settings)
    pipeline.prepare_step(settings)
    result = pipeline.train_step(settings, trigger="test")

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.params.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [result.run_id]  # one run, not one per rank
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["train.devices"] == "2"
    assert {"train/loss", "val/acc", "val/loss", "best_val_acc"} <= set(run.data.metrics)  # logged by rank 0
    assert 0.0 < result.best_val_acc == run.data.metrics["best_val_acc"] <= 1.0  # read back after the spawned fit
    assert (result.bundle_dir / "bundle").is_dir()
    assert "bundle" in {a.path for a in client.list_artifacts(result.run_id)}

    # Each rank saw half the train images: the optimizer stepped ceil(ceil(n / 2) / BATCH) times, not ceil(n / BATCH).
    manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
    n_train = len(stratified_subset(manifest[manifest["split"] == "train"], FRACTION, settings.seed))
    assert math.ceil(n_train / BATCH) > math.ceil(math.ceil(n_train / 2) / BATCH)
    best = torch.load(result.out_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == math.ceil(math.ceil(n_train / 2) / BATCH)
