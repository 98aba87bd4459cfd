"""End to end: `dvc repro` and the Prefect training flow on a small subset, real DVC/MLflow/Prefect."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers.project import run


def test_dvc_repro_tracks_run_in_mlflow_and_leaves_status_clean(make_project):
    from mlflow import MlflowClient

    from visionloop.config import Settings

    project = make_project()
    run(["dvc", "repro"], project)

    status = run(["dvc", "status"], project).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro"], project).stdout
    assert "didn't change, skipping" in again and "Running stage" not in again, again

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    raw_hash = next(o["md5"] for o in lock["stages"]["import"]["outs"] if o["path"] == "data/raw")
    settings = Settings.load(project)
    client = MlflowClient(settings.tracking_uri)
    run_id = json.loads((project / "models" / "run.json").read_text())["run_id"]
    mlflow_run = client.get_run(run_id)

    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert mlflow_run.data.tags["git_commit"] == head
    assert mlflow_run.data.tags["data_version"] == raw_hash
    assert mlflow_run.data.tags["params_hash"] == settings.params_hash
    metrics = mlflow_run.data.metrics
    assert {"train/loss", "val/acc", "test/accuracy", "test/macro_f1", "test/roc_auc_ovr"} <= metrics.keys()
    assert len(client.get_metric_history(run_id, "val/acc")) == 3  # one point per epoch
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/roc_curves.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "data")} >= {"data/data_report.json"}
    written = json.loads((project / "metrics.json").read_text())
    assert written["accuracy"] == pytest.approx(metrics["test/accuracy"])

    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "accuracy" in shown
    registration = json.loads((project / "reports" / "registration.json").read_text())
    assert registration["version"] == "1"


def test_training_flow_completes_in_prefect_local_mode(make_project):
    from flows.training import training

    project = make_project()
    state = training(project_dir=str(project), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["metrics"]["accuracy"] > 0.5
    assert result["registration"]["version"] == "1"
    assert result["data_version"].endswith(".dir")
    # The flow recorded what it produced, so DVC agrees with it.
    assert "up to date" in run(["dvc", "status"], project).stdout
