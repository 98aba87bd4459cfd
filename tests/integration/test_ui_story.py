"""What the MLflow and Prefect UIs show tells the loop's story (issue 18): the training view, readable run
names and descriptions, the training data as a dataset input, described model versions; flow runs named
after their outcome, tagged, with artifacts linking the MLflow run. Real MLflow (SQLite), Prefect local mode."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from helpers.traffic import log_traffic

from visionloop.config import Settings
from visionloop.contracts import PromotionRecord
from visionloop.models import tracking
from visionloop.models.tracking import EXPERIMENT_KIND_TAG, NOTE_TAG, TRAINING_VIEW, registered_run_name


def flow_run_story(flow_run_id) -> tuple[str, list[str], list]:
    """Name, tags and artifacts of a flow run, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return run.name, run.tags, artifacts


def test_experiments_runs_versions_and_data_read_as_the_loop(trained_copy: Settings) -> None:
    settings = trained_copy
    client = tracking.client(settings)  # tracking AND registry of this copy (MLflow's global registry URI may differ)
    version = client.get_model_version(settings.model_name, "1")
    experiment = client.get_experiment_by_name(settings.params.mlflow.experiment)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_VIEW  # the model-training view, not GenAI

    run = client.get_run(version.run_id)
    assert run.info.run_name == "train v1"
    assert "Trained from scratch on data version" in run.data.tags[NOTE_TAG]
    assert f"Registered as {settings.model_name} v1." in run.data.tags[NOTE_TAG]
    (data,) = run.inputs.dataset_inputs
    data_tags = {tag.key: tag.value for tag in data.tags}
    assert data_tags["mlflow.data.context"] == "training"
    assert data_tags["data_version"] == run.data.tags["data_version"] == version.tags["data_version"]
    assert int(data_tags["n_images"]) > 0 and data.dataset.name == f"{settings.model_name} data"

    # The first champion's decision names the version and says why, in the registry and in its audit run.
    assert version.description.startswith("v1: trained (test)") and "First champion" in version.description
    promotion = client.get_experiment_by_name(settings.params.mlflow.promotion_experiment)
    assert promotion.tags[EXPERIMENT_KIND_TAG] == TRAINING_VIEW
    (decision,) = client.search_runs([promotion.experiment_id])
    assert decision.info.run_name == "promotion no champion→v1: initial"
    assert decision.data.tags[NOTE_TAG].startswith("**promotion no champion→v1: initial** (test)")


def test_a_retrained_version_is_named_and_described_by_its_gate_result(tmp_path: Path) -> None:
    from visionloop.promotion.audit import decision_title, plot_slice_comparison, version_description

    assert registered_run_name("retrain fine_tuning", "2") == "retrain v2 fine_tuning"
    assert registered_run_name("train", "1") == "train v1"
    record = PromotionRecord(model_name="m", decision="promoted", from_version="1", to_version="2",
                             candidate_version="2", reason="promoted: +0.08 macro_f1", trigger="retrain:drift-alert",
                             metrics={"champion": {"macro_f1": 0.81}, "challenger": {"macro_f1": 0.89}})
    assert decision_title(record) == "promotion v1→v2: promoted"
    assert version_description(record).startswith(
        "v2: retrained on drift alert; +0.080 macro-F1 on the gate set (0.810 → 0.890) vs v1. Promoted to champion")
    slices = pd.DataFrame({"column": ["overall", "origin", "origin"], "slice": ["all", "camera", "scan"],
                           "n": [40, 20, 20], "champion_accuracy": [0.8, 0.6, 1.0],
                           "challenger_accuracy": [0.9, 0.85, 0.95], "delta": [0.1, 0.25, -0.05],
                           "checked": [True] * 3, "regressed": [False, False, True]})
    plot = plot_slice_comparison(slices, record, tmp_path / "slices.png")
    assert plot.stat().st_size > 5_000


def test_monitor_runs_are_named_tagged_and_carry_their_verdict_and_links(
    trained_copy: Settings, tmp_path: Path, monkeypatch
) -> None:
    from helpers.traffic import unseen_images

    from flows.monitor import monitor
    from visionloop.data.corruptions import corrupt
    from visionloop.monitoring.monitored import load_monitored

    settings = trained_copy
    monkeypatch.setenv("VISIONLOOP_DB_URL", f"sqlite:///{tmp_path / 'predictions.db'}")
    name = settings.model_name
    quiet = monitor(project_dir=str(settings.root), return_state=True)  # no traffic yet
    quiet_name, quiet_tags, _ = flow_run_story(quiet.state_details.flow_run_id)
    assert quiet_name == f"monitor {name} v1: not enough data" and "severity:none" in quiet_tags

    images, _ = unseen_images(settings)
    log_traffic(settings, load_monitored(settings).model, corrupt(images[:50], "brightness_contrast", 2))
    state = monitor(project_dir=str(settings.root), since_minutes=10, return_state=True)
    outcome = state.result()
    run_name, run_tags, artifacts = flow_run_story(state.state_details.flow_run_id)
    assert run_name == f"monitor {name} v1: drift critical → retrain started"
    assert {"outcome:drift", "severity:critical", "alert:retrain_started"} <= set(run_tags)
    (verdict,) = [a for a in artifacts if a.type == "table"]
    assert len(json.loads(verdict.data)) == len(outcome["verdict"]["features"])
    (summary,) = [a for a in artifacts if a.key == f"monitor-{name}-summary"]
    assert "drifted features" in summary.data
    links = {a.data for a in artifacts if a.type == "markdown" and a.key != summary.key}  # "[text](url)"
    for url in (f"runs:/{outcome['mlflow_run_id']}", f"models:/{name}/1",
                Path(outcome["files"]["index"]).resolve().as_uri()):
        assert any(link.endswith(f"({url})") for link in links), url


def test_promotion_runs_carry_the_before_after_table(trained_copy: Settings) -> None:
    from prefect import flow

    from flows.story import retrain_title, tell_promotion

    settings = trained_copy
    record = PromotionRecord(model_name=settings.model_name, decision="refused", from_version="1", to_version="1",
                             candidate_version="1", reason="v1 is already the champion", trigger="test",
                             metrics={"champion": {"accuracy": 0.9, "macro_f1": 0.8},
                                      "challenger": {"accuracy": 0.95, "macro_f1": 0.7}})

    @flow(name="story-test")
    def story() -> str:
        return tell_promotion(settings, record, retrain_title(record))

    state = story(return_state=True)
    run_name, run_tags, artifacts = flow_run_story(state.state_details.flow_run_id)
    assert run_name == "retrain v1→v1: refused" and "decision:refused" in run_tags
    (table,) = [a for a in artifacts if a.type == "table"]
    assert '"change": "+0.0500"' in table.data and '"change": "-0.1000"' in table.data
    assert any(a.data.endswith(f"(models:/{settings.model_name}/1)") for a in artifacts if a.type == "markdown")


def test_deployments_and_the_drift_automation_say_what_they_do(trained_copy: Settings) -> None:
    from flows.deployments import build_deployments

    deployments = build_deployments(trained_copy)
    assert {d.name for d in deployments} == {"training", "promote", "canary", "batch_inference", "monitor", "retrain"}
    assert all(d.description and len(d.description) > 40 for d in deployments)
    (retrain,) = [d for d in deployments if d.name == "retrain"]
    assert "drift alert" in retrain.triggers[0].description
