"""``visionloop label``: enqueue (no champion yet: the rules that need none still run), progress, suspects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.images import write_tiny_source
from helpers.models import save_bundle, tiny_model
from helpers.project import REPO
from helpers.records import record
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.config import Settings
from visionloop.store.predlog import PredictionLog


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(tmp_path))
    return tmp_path


def test_enqueue_and_progress(project: Path) -> None:
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


def test_enqueue_takes_the_champion_and_a_previous_version_from_the_registry(
    trained_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The champion's reference profile feeds the drift rule; ``--previous`` names the disagreement rule's model."""
    champion = "1"
    plog = PredictionLog(trained_copy.db_url)
    bright = {"brightness": 0.97, "contrast": 0.01}  # far outside the digits the champion was trained on
    plog.write([record(0.95, version=champion, features=bright) for _ in range(20)])
    plog.dispose()
    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(trained_copy.root))
    result = CliRunner().invoke(app, ["label", "enqueue", "--json", "--previous", champion])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["previous_version"] == champion
    assert not any("no champion" in note for note in payload["notes"]), payload["notes"]
    assert "brightness" in payload["drifted_features"]
    assert payload["examined"] == 20 and payload["queued"]["drift"] > 0
    assert payload["queued"]["disagreement"] == 0  # answered by that same version: nothing to compare


def test_suspects_with_a_bundle_folder(project: Path) -> None:
    from visionloop.data.prepare import prepare_from_settings

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(source="incoming", prepared_dir="data/prepared")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    write_tiny_source(project / "incoming")
    prepare_from_settings(Settings.load(project))

    bundle = save_bundle(tiny_model(["a", "b", "c"]), project / "bundle-dir")

    output = project / "out" / "suspects.csv"
    result = CliRunner().invoke(app, ["label", "suspects", "--model", str(bundle), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "suspected label errors" in result.stdout and str(output) in result.stdout
    header = output.read_text().splitlines()[0].split(",")
    assert header[:3] == ["sha256", "path", "split"] and "suggested_label" in header
    assert json.loads(output.with_suffix(".json").read_text())["model_version"] == "local"

    missing = CliRunner().invoke(app, ["label", "suspects", "--model", str(project / "nope")])
    assert missing.exit_code != 0
