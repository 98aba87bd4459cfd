"""Monitoring against a real champion: calibrated false alarms on real digit features, detection, the
monitor's report in MLflow and the Evidently workspace, the Prefect flow (local mode), the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.traffic import log_traffic
from scipy import stats
from typer.testing import CliRunner

from visionloop.config import Settings


def features_of(champion, images: list[np.ndarray]) -> pd.DataFrame:
    from visionloop.monitoring.features import feature_frame

    model = champion.model
    return feature_frame(images, model.predict(images), model.classes, model.reduction)


def test_champion_is_cached_by_version(trained_settings: Settings, champion) -> None:
    from visionloop.contracts import BUNDLE_FILES
    from visionloop.monitoring.monitored import load_monitored

    assert champion.version == "1" and champion.name == trained_settings.model_name
    cached = trained_settings.state_dir / "models" / trained_settings.model_name / "1"  # models.cache
    assert champion.bundle_dir == cached
    assert (champion.bundle_dir / BUNDLE_FILES["test_set"] / "manifest.csv").exists()
    marker = champion.bundle_dir / ".complete"
    stamp = marker.stat().st_mtime_ns
    again = load_monitored(trained_settings, f"models:/{trained_settings.model_name}@champion")
    assert again.version == "1" and marker.stat().st_mtime_ns == stamp  # not downloaded twice
    assert len(again.reference) == len(champion.reference) > 400


def test_false_alarm_rate_on_real_digit_features_is_at_most_alpha(champion) -> None:
    """Windows from held-out digits the reference doesn't hold: ≤ 5 % alarms (binomial test at 1 %).

    Each window splits the profile's held-out rows at random into a reference half and a current half,
    so reference and current never share an image.
    """
    from visionloop.monitoring.drift import DriftThresholds, run_drift_tests
    from visionloop.monitoring.monitor import monitored_columns

    thresholds = DriftThresholds(alpha=0.05, critical_share=0.3, critical_distance=0.5)
    profile = champion.reference.reset_index(drop=True)
    columns = monitored_columns(champion, profile)
    assert {"brightness", "emb_0", "pred_label", "confidence", "prob_9"} <= set(columns)
    rng = np.random.default_rng(0)
    half = len(profile) // 2
    for n, runs in ((50, 300), (20, 100), (200, 100)):
        alarms = 0
        for _ in range(runs):
            order = rng.permutation(len(profile))
            reference, current = profile.iloc[order[:half]], profile.iloc[rng.choice(order[half:], n, replace=False)]
            alarms += run_drift_tests(reference, current, thresholds, columns=columns).drift
        p_value = stats.binomtest(alarms, runs, 0.05, alternative="greater").pvalue
        assert p_value > 0.01, f"{alarms}/{runs} false alarms at n={n}"
        if runs >= 300:
            assert alarms / runs <= 0.05


def test_strong_corruption_is_detected_and_evidently_agrees(champion, clean) -> None:
    from visionloop.data.corruptions import corrupt
    from visionloop.monitoring.drift import DriftThresholds, run_drift_tests
    from visionloop.monitoring.evidently_report import check_drift, evidently_dataset_drift
    from visionloop.monitoring.monitor import monitored_columns

    thresholds = DriftThresholds(alpha=0.05, critical_share=0.3, critical_distance=0.5)
    images = clean[0][:60]
    for current, expect in ((features_of(champion, images), False),
                            (features_of(champion, corrupt(images, "gaussian_noise", 2)), True)):
        columns = monitored_columns(champion, current)
        fast = run_drift_tests(champion.reference, current, thresholds, columns=columns)
        verdict, snapshot = check_drift(champion.reference, current, thresholds, columns=columns)
        assert verdict.drift is fast.drift is expect
        assert verdict.drifted_features == fast.drifted_features
        assert evidently_dataset_drift(snapshot) is expect
    assert verdict.severity == "critical" and {"sharpness", "entropy"} <= set(verdict.drifted_features)


def test_a_small_window_is_not_enough_data(trained_settings: Settings, champion, clean, fresh_log: Path) -> None:
    from visionloop.monitoring.monitor import run_monitor

    log_traffic(trained_settings, champion.model, clean[0][:5])
    before = sorted((trained_settings.state_dir / "monitoring").glob("*"))
    result = run_monitor(trained_settings)
    assert result.status == "not_enough_data" and result.verdict is None
    assert "not enough data" in result.message and "5 prediction" in result.message
    assert result.alert is None and result.files == {} and result.mlflow_run_id is None
    assert sorted((trained_settings.state_dir / "monitoring").glob("*")) == before  # nothing written
    assert result.performance is not None and result.performance.status == "not_enough_labels"


def test_drifted_traffic_is_reported_logged_and_alerted(
    trained_settings: Settings, champion, clean, fresh_log: Path
) -> None:
    from mlflow import MlflowClient

    from visionloop.data.corruptions import corrupt
    from visionloop.monitoring.monitor import run_monitor

    images = clean[0][:40]
    log_traffic(trained_settings, champion.model, clean[0][40:80])  # older, clean: outside the window of 40
    log_traffic(trained_settings, champion.model, corrupt(images, "blur", 2))
    result = run_monitor(trained_settings, window=40)
    assert result.status == "drift" and result.n_window == 40
    verdict = result.verdict
    assert verdict.drift and verdict.n_current == 40 and verdict.model_version == "1"
    assert "sharpness" in verdict.drifted_features
    assert not {"id", "created_at", "image_path", "model_version", "source"} & {f.feature for f in verdict.features}

    # The files, under <state>/monitoring/<timestamp>/.
    assert result.out_dir.parent == trained_settings.state_dir / "monitoring"
    assert set(result.files) == {"report", "verdict", "images", "index"}
    assert json.loads(result.files["verdict"].read_text())["drifted_features"] == verdict.drifted_features
    assert result.files["report"].stat().st_size > 100_000
    page = result.files["index"].read_text()
    assert 'href="report.html"' in page and 'src="images.png"' in page and "sharpness" in page
    from PIL import Image

    with Image.open(result.files["images"]) as grid:
        assert grid.size[0] > 600 and grid.size[1] > 300

    # MLflow: a run in the monitoring experiment with the verdict and the files.
    client = MlflowClient(trained_settings.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == trained_settings.params.mlflow.monitoring_experiment
    assert run.data.tags["drift"] == "true" and run.data.tags["severity"] == verdict.severity
    assert run.data.tags["model_version"] == "1"
    assert run.data.metrics["share_drifted"] == pytest.approx(verdict.share_drifted)
    assert run.data.metrics["p_value.sharpness"] < 1e-6
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert {"drift/report.html", "drift/verdict.json", "drift/images.png", "drift/index.html"} <= logged
    # The pages render in MLflow's frame: nothing relative, the image inlined, links name the artifacts.
    import re

    from visionloop.monitoring.outputs import is_relative

    index = Path(client.download_artifacts(run.info.run_id, "drift/index.html", str(result.out_dir / "mlflow")))
    logged_page = index.read_text()
    addresses = re.findall(r"\b(?:src|href)=[\"']([^\"']*)[\"']", logged_page)
    assert addresses and not [a for a in addresses if is_relative(a)]
    assert 'src="data:image/png;base64,' in logged_page and "drift/report.html" in logged_page

    # The Evidently workspace: one project for the model, the snapshot in it.
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(trained_settings.state_dir / "evidently"))
    (project,) = workspace.search_project(trained_settings.model_name)
    assert result.evidently_snapshot_id in {str(run_id) for run_id in workspace.list_runs(project.id)}

    # The alert: the verdict summary, the cause.
    alert = result.alert
    assert alert["drift"] is True and alert["cause"] == "drift" and alert["severity"] == verdict.severity
    assert alert["drifted_features"] == verdict.drifted_features and alert["model_version"] == "1"


def test_monitor_flow_logs_its_report_and_raises_no_alert_on_clean_traffic(
    trained_settings: Settings, champion, clean, fresh_log: Path
) -> None:
    from mlflow import MlflowClient

    from flows.monitor import monitor
    from visionloop.healing.alerts import AlertLog

    images, labels = clean
    log_traffic(trained_settings, champion.model, images[:120], labels[:120])  # clean, with feedback
    state = monitor(project_dir=str(trained_settings.root), return_state=True)
    assert state.is_completed(), state
    outcome = state.result()
    assert outcome["status"] == "ok" and outcome["verdict"]["drift"] is False
    assert outcome["alert"] is None and outcome["alert_raised"] is False
    assert outcome["performance"]["status"] == "checked" and outcome["performance"]["n"] == 120
    assert outcome["performance"]["summary"]["degraded"] is False
    client = MlflowClient(trained_settings.tracking_uri)
    run = client.get_run(outcome["mlflow_run_id"])
    assert run.data.tags["drift"] == "false" and run.data.tags["visionloop.kind"] == "drift"
    assert "drift/report.html" in {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    performance_run = client.get_run(outcome["performance"]["mlflow_run_id"])
    assert performance_run.data.metrics["accuracy"] > 0.8
    assert AlertLog(trained_settings.db_url).history(trained_settings.model_name).empty


def test_monitor_flow_raises_the_alert_on_drift(trained_settings: Settings, champion, clean, fresh_log: Path) -> None:
    from flows.monitor import monitor
    from visionloop.data.corruptions import corrupt
    from visionloop.healing.alerts import AlertLog

    log_traffic(trained_settings, champion.model, corrupt(clean[0][:50], "brightness_contrast", 2))
    outcome = monitor(project_dir=str(trained_settings.root), since_minutes=10)  # a window by time
    assert outcome["status"] == "drift" and outcome["n_window"] == 50 and outcome["alert_raised"] is True
    assert outcome["alert"]["cause"] == "drift" and outcome["alert"]["severity"] == "critical"
    history = AlertLog(trained_settings.db_url).history(trained_settings.model_name)
    assert len(history) == 1 and history.iloc[0]["id"] == outcome["alert_id"]
    assert json.loads(history.iloc[0]["payload"])["drifted_features"] == outcome["alert"]["drifted_features"]
    # The drifted traffic feeds the labeling queue (a second scan queues nothing twice: test_labeling).
    assert outcome["labeling"]["examined"] == 50 and outcome["labeling"]["queued"]["drift"] > 0


def test_a_check_with_nothing_new_does_nothing_but_say_so(
    trained_settings: Settings, champion, clean, fresh_log: Path
) -> None:
    """The scheduled monitor re-running on the same window logs no duplicate run, snapshot or alert."""
    from mlflow import MlflowClient

    from flows.monitor import monitor
    from visionloop.data.corruptions import corrupt
    from visionloop.healing.alerts import AlertLog
    from visionloop.monitoring.monitor import run_monitor

    client = MlflowClient(trained_settings.tracking_uri)
    experiment = client.get_experiment_by_name(trained_settings.params.mlflow.monitoring_experiment)

    def traces() -> tuple[int, int, int]:
        """MLflow runs of the monitoring experiment, report folders, recorded alerts."""
        runs = len(client.search_runs([experiment.experiment_id])) if experiment else 0
        folders = len(list((trained_settings.state_dir / "monitoring").glob("*")))
        return runs, folders, len(AlertLog(trained_settings.db_url).history(trained_settings.model_name))

    images = corrupt(clean[0][:40], "blur", 2)
    log_traffic(trained_settings, champion.model, images[:39])
    first = monitor(project_dir=str(trained_settings.root), window=40)
    assert first["status"] == "drift" and first["alert_raised"] is True
    experiment = client.get_experiment_by_name(trained_settings.params.mlflow.monitoring_experiment)
    after_first = traces()

    again = monitor(project_dir=str(trained_settings.root), window=40)  # the schedule, 10 minutes later
    assert again["status"] == "no_new_data" and "nothing new" in again["message"]
    assert again["verdict"] is None and again["mlflow_run_id"] is None and again["alert_raised"] is False
    assert run_monitor(trained_settings, window=40).status == "no_new_data"  # the CLI's path as well
    assert traces() == after_first

    log_traffic(trained_settings, champion.model, images[39:])  # one new prediction: a real check again
    third = run_monitor(trained_settings, window=40, performance=False)
    assert third.status == "drift" and third.n_window == 40 and third.mlflow_run_id is not None


def test_monitor_and_drift_commands(trained_settings: Settings, champion, clean, fresh_log: Path, monkeypatch) -> None:
    from visionloop.cli.main import app

    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(trained_settings.root))
    runner = CliRunner()
    log_traffic(trained_settings, champion.model, clean[0][:30])
    result = runner.invoke(app, ["monitor", "--json", "--no-performance"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "ok" and outcome["n_window"] == 30 and outcome["alert"] is None

    # `drift` without --model uses the champion's embedding and output features.
    folder = trained_settings.path(trained_settings.params.data.prepared_dir) / "images"
    result = runner.invoke(app, ["drift", str(folder / "0"), str(folder / "1"), "--json"])
    assert result.exit_code == 0, result.output
    assert "champion" in result.stderr and "v1" in result.stderr
    assert {"emb_0", "prob_0", "pred_label"} <= {f["feature"] for f in json.loads(result.stdout)["features"]}
    result = runner.invoke(app, ["drift", str(folder / "0"), str(folder / "1"), "--json", "--stats-only"])
    assert "emb_0" not in {f["feature"] for f in json.loads(result.stdout)["features"]}
