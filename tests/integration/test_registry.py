"""The registry against a real MLflow store (SQLite) with real tiny models trained by ``visionloop.training.train``.

Two models are trained once for the module: a good one (a few epochs) and an untrained one (random
weights, about 10 % accuracy). Each test works on its own registered-model name, so the tests do
not depend on one another; the project's params.yaml lets any model be the first champion.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
import yaml
from helpers.project import create_project, run
from typer.testing import CliRunner

from visionloop.config import Settings
from visionloop.models.registry import list_versions, registry_lock
from visionloop.models.tracking import point_mlflow_at
from visionloop.promotion.audit import history
from visionloop.promotion.promote import apply_gate, evaluate_gate, promote, register_run
from visionloop.promotion.rollback import NothingToRollBack, rollback
from visionloop.serving.sources import registry_model_source

NORMALIZE = {"Normalize": {"mean": [0.5], "std": [0.5], "max_pixel_value": 255.0}}
RESIZE = {"Resize": {"height": 16, "width": 16}}
# 16×16 digits, no random augmentation, a narrow CNN: a good model in a few seconds of CPU.
FAST = {
    "data": {"image_size": 16},
    "augment": {"train": [RESIZE, NORMALIZE], "eval": [RESIZE, NORMALIZE]},
    "model": {"widths": [8, 16, 32], "embedding_dim": 32},
    "train": {"epochs": 4, "lr": 0.01, "limit_train_fraction": 1.0, "batch_size": 64},
    "registry": {"min_quality": {"metric": "accuracy", "threshold": 0.0}},
}


@dataclass
class Trained:
    project: Path
    head: str
    data_version: str
    good_run: str
    good_metrics: dict[str, float]
    good_dir: Path
    zero_run: str
    zero_metrics: dict[str, float]
    weak_run: str  # another near-random model: a second, distinct worse challenger (registration is per run)
    weak_metrics: dict[str, float]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from visionloop.data.digits import import_digits
    from visionloop.data.prepare import prepare_from_settings
    from visionloop.training.evaluate import run_evaluation
    from visionloop.training.train import train

    base = tmp_path_factory.mktemp("registry")
    state = base / "state"
    state.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISIONLOOP_STATE_DIR", str(state))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow.db'}")
        patch.setenv("VISIONLOOP_PROJECT_DIR", str(base / "project"))
        project = create_project(base / "project", FAST)
        head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
        import_digits(project / "data" / "raw", image_size=16)
        settings = Settings.load(project)
        prepare_from_settings(settings)
        prepared = project / "data" / "prepared"

        def fit(name: str, overrides: dict) -> tuple[str, dict[str, float], Path]:
            run_settings = Settings.load(project, overrides)
            result = train(run_settings, out_dir=project / f"models-{name}", run_name=name)
            evaluation = run_evaluation(
                run_settings, result.out_dir, prepared, project / f"metrics-{name}.json", project / f"plots-{name}"
            )
            return result.run_id, evaluation.metrics(), result.out_dir

        good_run, good_metrics, good_dir = fit("good", {})
        # One step at a vanishing learning rate on a sliver of the data: random weights, about 10 % accuracy.
        zero_run, zero_metrics, _ = fit("zero", {"train": {"epochs": 1, "lr": 1e-12, "limit_train_fraction": 0.05}})
        weak_run, weak_metrics, _ = fit("weak", {"train": {"epochs": 1, "lr": 1e-12, "limit_train_fraction": 0.05}})
        from visionloop.data.lineage import dvc_hash

        assert good_metrics["macro_f1"] > zero_metrics["macro_f1"] + 0.5, (good_metrics, zero_metrics)
        yield Trained(
            project, head, dvc_hash(project / "data" / "raw"), good_run, good_metrics, good_dir, zero_run, zero_metrics,
            weak_run, weak_metrics,
        )


def named(trained: Trained, name: str, **registry) -> Settings:
    return Settings.load(trained.project, {"registry": {"model_name": name, **registry}})


def aliases(settings: Settings) -> dict[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    return {alias: str(version) for alias, version in client.get_registered_model(settings.model_name).aliases.items()}


def test_first_champion_must_pass_the_minimum_quality(trained):
    settings = named(trained, "t-minq", min_quality={"metric": "accuracy", "threshold": 0.5})

    weak = register_run(settings, trained.zero_run, trained.zero_metrics, trigger="test")
    assert (weak.version, weak.aliases) == ("1", ["challenger"])
    assert weak.record is not None and weak.record.decision == "refused"
    assert "below the minimum 0.5" in weak.record.reason
    assert "champion" not in aliases(settings)

    good = register_run(settings, trained.good_run, trained.good_metrics, trigger="test")
    assert (good.version, good.aliases) == ("2", ["champion"])
    assert good.record.decision == "initial" and good.record.to_version == "2"
    assert [r.decision for r in history(settings)] == ["initial", "refused"]


def test_lineage_tags_point_at_the_real_commit_and_data_version(trained):
    settings = named(trained, "t-lineage")
    registered = register_run(settings, trained.good_run, trained.good_metrics, trigger="test")
    # DVC itself, not our code, says what the data version of data/raw is.
    run(["dvc", "commit", "--force", "import"], trained.project)
    lock = yaml.safe_load((trained.project / "dvc.lock").read_text())
    dvc_md5 = next(o["md5"] for o in lock["stages"]["import"]["outs"] if o["path"] == "data/raw")

    (version,) = list_versions(settings)
    lineage = version["lineage"]
    assert len(trained.head) == 40 and lineage["git_commit"] == trained.head
    assert lineage["data_version"] == dvc_md5 == trained.data_version
    assert lineage["params_hash"] == Settings.load(trained.project).params_hash
    assert lineage["run_id"] == registered.run_id == trained.good_run
    assert (lineage["strategy"], lineage["base_model"]) == ("full", "none")
    assert version["metrics"]["macro_f1"] == pytest.approx(trained.good_metrics["macro_f1"], rel=1e-5)
    assert version["aliases"] == ["champion"]
    assert datetime.now(UTC) - timedelta(hours=1) < datetime.fromisoformat(version["created"]) <= datetime.now(UTC)


def test_state_dict_reloads_into_the_lightning_module_and_predicts_like_the_served_pt2(trained, tmp_path):
    import mlflow

    from visionloop.data.manifest import read_manifest
    from visionloop.training.datamodule import load_images
    from visionloop.training.model import ImageClassifier
    from visionloop.training.preprocess import pipeline_from_json, to_tensor_batch

    settings = named(trained, "t-weights")
    version = register_run(settings, trained.good_run, trained.good_metrics, trigger="test").version
    point_mlflow_at(settings.tracking_uri)
    bundle = Path(
        mlflow.artifacts.download_artifacts(run_id=trained.good_run, artifact_path="bundle", dst_path=str(tmp_path))
    )
    module = ImageClassifier(**json.loads((bundle / "model_config.json").read_text()))
    module.net.load_state_dict(torch.load(bundle / "state_dict.pt", map_location="cpu", weights_only=True))
    module.eval()
    test = read_manifest(trained.project / "data" / "prepared").query("split == 'test'").head(16)
    batch = to_tensor_batch(
        pipeline_from_json((bundle / "eval_transform.json").read_text()), load_images(test["abs_path"].tolist())
    )

    served = mlflow.pytorch.load_model(f"models:/{settings.model_name}/{version}")
    with torch.inference_mode():
        eager, exported = module(batch), served(batch)
    assert eager.shape == (16, 10)
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=0)
    assert (eager.argmax(1).numpy().astype(str) == test["label"].to_numpy()).mean() > 0.8


def test_better_challenger_is_promoted_worse_refused_and_rollback_restores(trained, monkeypatch):
    from mlflow import MlflowClient

    from visionloop.cli.main import app

    settings = Settings.load(trained.project)  # the project's own model name: the CLI uses it too
    source = registry_model_source(settings)
    assert source.current_version() is None
    assert register_run(settings, trained.zero_run, trained.zero_metrics, trigger="test").aliases == ["champion"]
    assert source.current_version() == "1"
    assert register_run(settings, trained.good_run, trained.good_metrics, trigger="test").aliases == ["challenger"]

    cli = CliRunner()
    result = cli.invoke(app, ["promote", "--trigger", "test-cli"])
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output and "macro_f1" in result.output
    assert aliases(settings) == {"champion": "2"} and source.current_version() == "2"
    served = source.load("2")
    assert (served.version, len(served.classes)) == ("2", 10)

    register_run(settings, trained.weak_run, trained.weak_metrics, trigger="test")
    refused = promote(settings, trigger="test")
    assert (refused.decision, refused.from_version, refused.to_version) == ("refused", "2", "2")
    assert "does not beat champion v2 on macro_f1" in refused.reason
    assert refused.metrics["challenger"]["macro_f1"] < refused.metrics["champion"]["macro_f1"]
    assert aliases(settings) == {"champion": "2", "challenger": "3"}

    result = cli.invoke(app, ["rollback", "--json", "--trigger", "test-cli"])
    assert result.exit_code == 0, result.output
    rolled = json.loads(result.output)
    assert (rolled["decision"], rolled["from_version"], rolled["to_version"]) == ("rollback", "2", "1")
    assert aliases(settings)["champion"] == "1"
    with pytest.raises(NothingToRollBack, match="no earlier champion"):
        rollback(settings, trigger="test")

    # The audit log is in MLflow: a fresh process reads it back, newest first.
    shown = run(["visionloop", "registry", "history", "--json"], trained.project)
    records = json.loads(shown.stdout)
    assert [(r["decision"], r["from_version"], r["to_version"], r["trigger"]) for r in records] == [
        ("rollback", "2", "1", "test-cli"),
        ("refused", "2", "2", "test"),
        ("promoted", "1", "2", "test-cli"),
        ("initial", None, "1", "test"),
    ]
    # Each decision is a run with both models' metrics side by side and the reason in words.
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.params.mlflow.promotion_experiment)
    (refusal,) = client.search_runs([experiment.experiment_id], "tags.decision = 'refused' and tags.to_version = '2'")
    assert refusal.data.tags["reason"] == refused.reason
    assert refusal.data.metrics["challenger.macro_f1"] == pytest.approx(refused.metrics["challenger"]["macro_f1"])
    assert "champion.f1_class_3" in refusal.data.metrics
    files = {a.path for a in client.list_artifacts(refusal.info.run_id)}
    assert {"promotion_record.json", "comparison.csv", "slices_comparison.csv", "slices_comparison.png"} <= files
    # The UI's story: decisions are named runs, the promoted version says how it compared.
    assert refusal.info.run_name == f"promotion v2→v{refused.candidate_version}: refused"
    (promotion,) = client.search_runs([experiment.experiment_id], "tags.decision = 'promoted'")
    assert promotion.info.run_name == "promotion v1→v2: promoted"
    described = client.get_model_version(settings.model_name, "2").description
    assert described.startswith("v2: trained (test-cli); ") and "macro-F1 on the gate set" in described

    listed = json.loads(cli.invoke(app, ["registry", "list", "--json"]).output)
    assert [(v["version"], v["aliases"]) for v in listed] == [("3", ["challenger"]), ("2", []), ("1", ["champion"])]
    assert cli.invoke(app, ["registry", "history"]).exit_code == 0

    # A person's override skips the gate, is recorded with the reason, and rollback walks back over it.
    result = cli.invoke(app, ["registry", "set-champion", "3", "--reason", "known good", "--json"])
    assert result.exit_code == 0, result.output
    assigned = json.loads(result.output)
    assert (assigned["decision"], assigned["from_version"], assigned["to_version"]) == ("assigned", "1", "3")
    assert "known good" in assigned["reason"] and aliases(settings) == {"champion": "3"}
    assert rollback(settings, trigger="test").to_version == "1"
    assert cli.invoke(app, ["registry", "set-champion", "99", "--reason", "typo"]).exit_code != 0


def test_a_challenger_that_cannot_load_or_predict_is_refused(trained, tmp_path):
    from mlflow import MlflowClient

    settings = named(trained, "t-broken")
    register_run(settings, trained.zero_run, trained.zero_metrics, trigger="test")
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.params.mlflow.experiment).experiment_id

    empty = client.create_run(experiment, run_name="no-artifacts").info.run_id
    no_bundle = client.create_model_version(settings.model_name, f"runs:/{empty}/model", run_id=empty).version
    record = promote(settings, trigger="test", candidate_version=str(no_bundle))
    assert record.decision == "refused" and "could not be loaded" in record.reason

    # A bundle whose classes do not match the gate set's labels: it loads but cannot be scored.
    bundle = shutil.copytree(trained.good_dir / "bundle", tmp_path / "bundle")
    (bundle / "classes.json").write_text(json.dumps([f"letter-{c}" for c in "abcdefghij"]))
    renamed = client.create_run(experiment, run_name="wrong-classes").info.run_id
    client.log_artifacts(renamed, str(bundle), "bundle")
    wrong = client.create_model_version(settings.model_name, f"runs:/{renamed}/model", run_id=renamed).version
    record = promote(settings, trigger="test", candidate_version=str(wrong))
    assert record.decision == "refused" and "could not predict on the gate set" in record.reason
    assert aliases(settings)["champion"] == "1"
    assert [r.decision for r in history(settings)] == ["refused", "refused", "initial"]


def test_two_racing_promotions_do_not_both_win(trained):
    settings = named(trained, "t-race")
    register_run(settings, trained.zero_run, trained.zero_metrics, trigger="test")
    register_run(settings, trained.good_run, trained.good_metrics, trigger="test")
    start = threading.Barrier(2)
    records, errors = [], []

    def contender(name: str) -> None:
        try:
            start.wait()
            records.append(promote(settings, trigger=name, candidate_version="2"))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=contender, args=(f"racer-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(r.decision for r in records) == ["promoted", "refused"]
    loser = next(r for r in records if r.decision == "refused")
    assert "moved from v1 to v2" in loser.reason or "already the champion" in loser.reason
    assert aliases(settings)["champion"] == "2"


def test_compare_and_set_refuses_a_verdict_on_a_champion_that_moved(trained):
    settings = named(trained, "t-cas")
    register_run(settings, trained.zero_run, trained.zero_metrics, trigger="test")
    register_run(settings, trained.good_run, trained.good_metrics, trigger="test")
    first, second = evaluate_gate(settings, "2"), evaluate_gate(settings, "2")
    assert first.passed and second.passed and first.champion_version == second.champion_version == "1"

    assert apply_gate(settings, first, trigger="first").decision == "promoted"
    late = apply_gate(settings, second, trigger="second")
    assert (late.decision, late.from_version, late.to_version) == ("refused", "2", "2")
    assert "the champion moved from v1 to v2 while the gate was evaluating" in late.reason
    assert aliases(settings)["champion"] == "2"


def test_the_lock_excludes_other_processes(trained):
    settings = named(trained, "t-lock")
    code = (
        "import sys\nfrom visionloop.config import Settings\nfrom visionloop.models.registry import registry_lock\n"
        "s = Settings.load(sys.argv[1], {'registry': {'model_name': 't-lock'}})\n"
        "with registry_lock(s, timeout=0.3):\n    print('got it')\n"
    )
    with registry_lock(settings):
        blocked = run([sys.executable, "-c", code, str(trained.project)], trained.project, check=False)
    assert blocked.returncode != 0 and "TimeoutError" in blocked.stderr
    assert run([sys.executable, "-c", code, str(trained.project)], trained.project).stdout.strip() == "got it"


def test_labeled_production_images_unseen_by_both_models_join_the_gate_set(trained, tmp_path, monkeypatch):
    from PIL import Image

    from visionloop.contracts import PredictionRecord
    from visionloop.data.manifest import read_manifest
    from visionloop.store.predlog import PredictionLog

    monkeypatch.setenv("VISIONLOOP_DB_URL", f"sqlite:///{tmp_path / 'predictions.db'}")
    settings = named(trained, "t-production")
    register_run(settings, trained.zero_run, trained.zero_metrics, trigger="test")
    register_run(settings, trained.good_run, trained.good_metrics, trigger="test")
    # No prediction log yet: the gate uses the test split alone.
    assert evaluate_gate(settings, "2").gate_set["n_production"] == 0

    val = read_manifest(trained.project / "data" / "prepared").query("split == 'val'").head(20)
    now, long_ago = datetime.now(UTC), datetime(2001, 1, 1, tzinfo=UTC)
    records = []
    for i, (path, label) in enumerate(zip(val["abs_path"], val["label"], strict=True)):
        stored = tmp_path / "images" / f"{i}.png"
        stored.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, stored)
        fresh = i < 12  # labeled after both models were trained; the rest long before
        records.append(
            PredictionRecord(
                id=f"p{i}",
                created_at=(now if fresh else long_ago) - timedelta(seconds=1),
                model_name="m",
                model_version="1",
                label=label,
                confidence=0.9,
                probabilities={label: 0.9},
                features={},
                image_path=str(stored),
                feedback_label=label,
                feedback_at=now if fresh else long_ago,
            )
        )
    records.append(
        PredictionRecord(
            id="unknown-label",
            created_at=now,
            model_name="m",
            model_version="1",
            label="0",
            confidence=0.9,
            probabilities={},
            features={},
            image_path=str(tmp_path / "images" / "0.png"),
            feedback_label="cat",
            feedback_at=now,
        )
    )
    prediction_log = PredictionLog(settings.db_url)
    prediction_log.write(records)
    prediction_log.dispose()
    assert Image.open(tmp_path / "images" / "0.png").size == (16, 16)

    gate = evaluate_gate(settings, "2")
    n_test = len(read_manifest(trained.project / "data" / "prepared").query("split == 'test'"))
    assert (gate.gate_set["n_test_set"], gate.gate_set["n_production"]) == (n_test, 12)
    assert "8 left out: labeled before a model was trained" in gate.gate_set["production_note"]
    assert "1 left out: image missing or label unknown" in gate.gate_set["production_note"]
    origin = gate.slices[gate.slices["column"] == "origin"].set_index("slice")["n"].to_dict()
    assert origin == {"production": 12, "test_set": n_test}
    assert gate.passed and "+ 12 labeled production images" in gate.reason
