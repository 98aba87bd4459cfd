"""``visionloop label``: enqueue (no champion yet: the rules that need none still run), progress, suspects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.config import Settings
from visionloop.store.predlog import PredictionLog

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(tmp_path))
    return tmp_path


def test_enqueue_and_progress(project: Path) -> None:
    from test_labeling import record

    # The random rule samples ~2 % of ids (a hash of the random uuid); off here, so the counts are exact.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["labeling"]["random"]["rate"] = 0.0
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    settings = Settings.load(project)
    plog = PredictionLog(settings.db_url)
    plog.write([record(0.2), record(0.5), record(0.99)])
    plog.dispose()
    runner = CliRunner()
    result = runner.invoke(app, ["label", "enqueue", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["examined"] == 3 and payload["queued"]["low_confidence"] == 2
    assert payload["previous_version"] is None and payload["drifted_features"] == []
    assert any("no champion" in note for note in payload["notes"])

    again = json.loads(runner.invoke(app, ["label", "enqueue", "--json"]).stdout)
    assert again["total_queued"] == 0
    progress = json.loads(runner.invoke(app, ["label", "progress"]).stdout)
    assert progress["queued"] == 2 and progress["queued_per_class"] == {"2": 2}


def test_suspects_with_a_bundle_folder(project: Path) -> None:
    import torch
    from test_labeling import tiny_model
    from test_mislabel import write_tiny_source

    from visionloop.contracts import BUNDLE_FILES
    from visionloop.data.ingest import prepare_from_settings

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(source="incoming", prepared_dir="data/prepared")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    write_tiny_source(project / "incoming")
    prepare_from_settings(Settings.load(project))

    model = tiny_model("1")
    bundle = project / "bundle-dir"
    for key in ("config", "state_dict", "eval_transform", "classes"):
        (bundle / BUNDLE_FILES[key]).parent.mkdir(parents=True, exist_ok=True)
    (bundle / BUNDLE_FILES["config"]).write_text(json.dumps(model.config))
    torch.save(model.network.state_dict(), bundle / BUNDLE_FILES["state_dict"])
    (bundle / BUNDLE_FILES["eval_transform"]).write_text(model.eval_transform_json)
    (bundle / BUNDLE_FILES["classes"]).write_text(json.dumps(["a", "b", "c"]))

    output = project / "out" / "suspects.csv"
    result = CliRunner().invoke(app, ["label", "suspects", "--model", str(bundle), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "suspected label errors" in result.stdout and str(output) in result.stdout
    header = output.read_text().splitlines()[0].split(",")
    assert header[:3] == ["sha256", "path", "split"] and "suggested_label" in header
    assert json.loads(output.with_suffix(".json").read_text())["model_version"] == "local"

    missing = CliRunner().invoke(app, ["label", "suspects", "--model", str(project / "nope")])
    assert missing.exit_code != 0
