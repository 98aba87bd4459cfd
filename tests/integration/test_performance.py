"""Performance once labels arrive (the log's feedback, a labeled folder), the degradation flag, and slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.traffic import log_traffic
from PIL import Image
from typer.testing import CliRunner

from visionloop.config import Settings
from visionloop.training.evaluate import Evaluation

# --- the rule, on its own -------------------------------------------------------------------------------


def evaluation(n: int, correct: int) -> Evaluation:
    """``n`` predictions of two classes, the first ``correct`` of them right."""
    y_true = np.zeros(n, dtype=int)
    probabilities = np.tile([0.1, 0.9], (n, 1))
    probabilities[:correct] = [0.9, 0.1]
    return Evaluation(["a", "b"], y_true, probabilities)


def test_degradation_needs_a_drop_beyond_the_threshold_that_is_not_chance() -> None:
    from visionloop.monitoring.performance import degradation

    # 16/20 = 0.80 is 0.10 below 0.90, but 20 labels can't exclude 0.90 (Wilson upper bound 0.92): not flagged.
    assert degradation(0.90, evaluation(20, 16), 0.05, 0.15)[:2] == (False, "none")
    # 800/1000: the same drop, now certain → degraded; below the critical drop → warning.
    degraded, severity, drop, (low, high) = degradation(0.90, evaluation(1000, 800), 0.05, 0.15)
    assert degraded and severity == "warning" and drop == pytest.approx(0.10) and low < 0.8 < high < 0.90
    assert degradation(0.90, evaluation(1000, 740), 0.05, 0.15)[:2] == (True, "critical")
    # a significant drop smaller than the threshold is tolerated
    assert degradation(0.90, evaluation(1000, 870), 0.05, 0.15)[:2] == (False, "none")
    # no training-time accuracy: nothing to compare with
    assert degradation(None, evaluation(1000, 500), 0.05, 0.15)[:3] == (False, "none", None)


def test_evaluation_from_log_uses_the_logged_probabilities_and_skips_unknown_labels() -> None:
    from visionloop.monitoring.performance import evaluation_from_log

    frame = pd.DataFrame({
        "feedback_label": ["a", "b", "zebra", "a"],
        "prob_a": [0.8, 0.3, 0.5, np.nan],
        "prob_b": [0.2, 0.7, 0.5, np.nan],
    })
    scored, unusable = evaluation_from_log(frame, ["a", "b"])
    assert unusable == 2 and scored.y_true.tolist() == [0, 1]
    assert scored.probabilities.tolist() == [[0.8, 0.2], [0.3, 0.7]]
    assert scored.metrics()["accuracy"] == 1.0


# --- from the prediction log ------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_log")
def test_performance_from_feedback_matches_the_training_time_evaluation(
    trained_settings: Settings, champion, clean
) -> None:
    from mlflow import MlflowClient

    from visionloop.monitoring.performance import monitor_performance
    from visionloop.training.evaluate import evaluate_model

    images, labels = clean[0][:150], clean[1][:150]
    log_traffic(trained_settings, champion.model, images, labels[:120])  # the last 30 get no label
    result = monitor_performance(trained_settings, champion.model)
    assert result.status == "checked" and result.n == 120 and result.n_unusable == 0
    expected = evaluate_model(champion.model, images[:120], labels[:120])
    assert result.metrics["accuracy"] == pytest.approx(expected.metrics()["accuracy"])
    assert result.metrics["roc_auc_ovr"] == pytest.approx(expected.metrics()["roc_auc_ovr"], abs=1e-6)
    assert result.metrics["ece"] == pytest.approx(expected.metrics()["ece"], abs=1e-6)
    assert set(result.per_class) == set(champion.model.classes)
    assert not result.degraded and result.baseline["accuracy"] == champion.model.metrics["accuracy"]
    comparison = result.comparison().set_index("metric")
    assert comparison.loc["accuracy", "training"] == pytest.approx(champion.model.metrics["accuracy"])
    assert "f1_class_7" in comparison.index
    assert {"performance", "confusion", "roc"} <= set(result.files)
    written = json.loads(result.files["performance"].read_text())
    assert written["summary"]["n_labeled"] == 120 and written["comparison"][0]["metric"] == "accuracy"
    run = MlflowClient(trained_settings.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.tags["visionloop.kind"] == "performance" and run.data.tags["degraded"] == "false"
    assert run.data.metrics["training.accuracy"] == pytest.approx(champion.model.metrics["accuracy"])
    assert {"accuracy", "macro_f1", "roc_auc_ovr", "ece", "f1_class_3"} <= set(run.data.metrics)
    client = MlflowClient(trained_settings.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "performance")}
    assert {"performance/confusion_matrix.png", "performance/roc_curves.png"} <= artifacts


@pytest.mark.usefixtures("fresh_log")
def test_degraded_traffic_raises_a_performance_alert(trained_settings: Settings, champion, clean) -> None:
    from visionloop.data.corruptions import corrupt
    from visionloop.monitoring.monitor import alert_payload
    from visionloop.monitoring.performance import monitor_performance

    images, labels = clean[0][:100], clean[1][:100]
    log_traffic(trained_settings, champion.model, corrupt(images, "new_camera", 2), labels)
    result = monitor_performance(trained_settings, champion.model, log=False)
    assert result.degraded and result.severity == "critical"
    assert result.drop > trained_settings.params.monitoring.degradation_critical
    assert result.mlflow_run_id is None
    payload = alert_payload(None, result)
    assert payload["cause"] == "performance" and payload["severity"] == "critical" and payload["drift"] is False
    assert payload["performance"]["n_labeled"] == 100 and payload["model_version"] == "1"
    assert payload["performance"]["accuracy"] < payload["performance"]["training_accuracy"] - 0.15


@pytest.mark.usefixtures("fresh_log")
def test_few_labels_are_not_judged(trained_settings: Settings, champion, clean) -> None:
    from visionloop.monitoring.performance import monitor_performance

    log_traffic(trained_settings, champion.model, clean[0][:40], ["0"] * 10)  # ten labels, mostly wrong
    result = monitor_performance(trained_settings, champion.model)
    assert result.status == "not_enough_labels" and not result.degraded and result.n == 10
    assert "not enough labels" in result.message and result.files == {}


# --- slices ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def darkened_manifest(trained_settings: Settings, champion, tmp_path_factory) -> Path:
    """The bundle's test set as a CSV manifest with a `site` column; site B's images (a third) are darkened."""
    root = tmp_path_factory.mktemp("darkened")
    test_dir = champion.bundle_dir / "bundle" / "test_set"
    manifest = pd.read_csv(test_dir / "manifest.csv", dtype=str)
    rows = []
    for i, (name, label) in enumerate(zip(manifest["path"], manifest["label"], strict=True)):
        image = np.asarray(Image.open(test_dir / name))
        site = "B" if i % 3 == 0 else "A"
        if site == "B":
            image = (image.astype(np.float32) * 0.3).astype(np.uint8)
        Image.fromarray(image).save(root / name)
        rows.append({"path": name, "label": label, "site": site})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_slices_command_flags_the_deliberately_degraded_slice(
    trained_settings: Settings, champion, darkened_manifest: Path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    from visionloop.cli.main import app

    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(trained_settings.root))
    result = CliRunner().invoke(app, ["slices", "--data", str(darkened_manifest), "--json"])
    assert result.exit_code == 0, result.output
    table = pd.DataFrame(json.loads(result.stdout)).set_index(["column", "slice"])
    overall = table.loc[("overall", "all"), "accuracy"]
    assert table.loc[("site", "B"), "flagged"] and table.loc[("brightness", "dark"), "flagged"]
    assert not table.loc[("site", "A"), "flagged"] and not table.loc[("brightness", "bright"), "flagged"]
    assert table.loc[("site", "B"), "accuracy"] < overall < table.loc[("site", "A"), "accuracy"]
    assert table.loc[("site", "B"), "n"] == 90 and ("label", "3") in table.index

    client = MlflowClient(trained_settings.tracking_uri)
    experiment = client.get_experiment_by_name(trained_settings.params.mlflow.monitoring_experiment)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`visionloop.kind` = 'slices'")
    assert "site=B" in run.data.tags["flagged_slices"] and "brightness=dark" in run.data.tags["flagged_slices"]
    assert run.data.metrics["accuracy.site.B"] == pytest.approx(table.loc[("site", "B"), "accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "slices")} == {"slices/slices.png",
                                                                                  "slices/slices.csv"}


def test_slice_report_on_the_prepared_test_split(trained_settings: Settings, champion) -> None:
    from visionloop.monitoring.labeled import load_labeled
    from visionloop.monitoring.slice_report import slice_report

    labeled = load_labeled(trained_settings, channels=int(champion.model.config["in_channels"]))
    assert labeled.source.endswith("(test split)") and labeled.metadata.empty
    table, plot = slice_report(trained_settings, champion.model, labeled.images, labeled.labels, labeled.metadata,
                               reference=champion.reference, out_dir=trained_settings.state_dir / "slices-test")
    assert plot.exists() and (plot.parent / "slices.csv").exists()
    assert set(table["column"]) == {"overall", "label", "brightness", "contrast", "sharpness"}
    assert table.iloc[0]["n"] == len(labeled.images)


def test_performance_command_on_a_labeled_folder(trained_settings: Settings, champion, darkened_manifest: Path,
                                                 monkeypatch) -> None:
    from visionloop.cli.main import app

    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(trained_settings.root))
    result = CliRunner().invoke(app, ["performance", "--data", str(darkened_manifest), "--json"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "checked" and outcome["n"] == 269 and outcome["source"] == str(darkened_manifest)
    assert outcome["summary"]["degraded"] is True  # a third of the images darkened to 30 %
