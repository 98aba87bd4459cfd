"""Lineage you can restore (issue 15): ``visionloop data checkout`` gives back exactly the images a version
trained on — the first champion's and a retrained version's — from the DVC remote once every cache is gone,
md5-checked, and refuses a tampered copy."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from helpers.project import copy_project
from helpers.traffic import log_traffic, unseen_images
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.contracts import DATA_VERSION_FILE
from visionloop.data.restore import DataCorrupted, checkout
from visionloop.models.registry import model_version
from visionloop.models.tracking import run_text


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkout_restores_v1_and_a_retrained_v2_from_the_remote_and_detects_tampering(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from visionloop.healing import retrain
    from visionloop.models.cache import load_project_version
    from visionloop.models.uris import alias_uri

    settings = copy_project(trained_project, tmp_path / "project", {"retrain": {"epochs": 1}})
    name = settings.model_name

    # v2 the way the loop makes it: labeled production images → a snapshot (a new data version) → retrain.
    images, labels = unseen_images(settings)
    log_traffic(settings, load_project_version(settings, "1"), images[:40], labels[:40])
    snapshot = retrain.snapshot_data(settings, retrain.new_labeled_production(settings), reason="test")
    workspace = retrain.RetrainWorkspace(tmp_path / "retrain")
    retrain.prepare_snapshot(settings, snapshot.manifest, workspace)
    retrain.train_challenger(settings, workspace, snapshot.data_version, alias_uri(name), "test")
    metrics = retrain.evaluate_challenger(settings, workspace)
    assert retrain.register_challenger(settings, workspace, metrics, "test").version == "2"

    v1, v2 = model_version(settings, "1"), model_version(settings, "2")
    assert v2.tags["data_version"] == snapshot.data_version.dvc_hash != v1.tags["data_version"]
    assert snapshot.data_version.dvc_hash in run_text(settings, v2.run_id, DATA_VERSION_FILE)  # stored with v2
    trained_on = {"1": files_of(settings.path("data/raw")), "2": files_of(snapshot.directory)}
    assert len(trained_on["2"]) == len(trained_on["1"]) + 40 + 1  # the production images and the manifest

    # Every cache gone, and the training folders too: only the registry and the DVC remote are left.
    for folder in (settings.root / ".dvc" / "cache", settings.state_dir / "models",
                   settings.state_dir / "dvc-site-cache", settings.path("data/raw"), settings.path("data/snapshots")):
        shutil.rmtree(folder)

    first = checkout(settings, f"models:/{name}/1", tmp_path / "v1")
    second = checkout(settings, f"models:/{name}@challenger", tmp_path / "v2")
    assert (first.dvc_hash, second.dvc_hash) == (v1.tags["data_version"], v2.tags["data_version"])
    assert files_of(tmp_path / "v1") == trained_on["1"] and files_of(tmp_path / "v2") == trained_on["2"]
    assert first.fetched > 0 and second.fetched > 0  # from the remote: the cache was empty
    assert (first.n_files, second.n_files) == (len(trained_on["1"]), len(trained_on["2"]))

    # A file of v2 altered in the remote (with no cache to hide it) is caught, and nothing is left behind.
    manifest = trained_on["2"]["manifest.csv"]
    digest = hashlib.md5(manifest).hexdigest()
    stored = Path(settings.dvc_remote) / "files" / "md5" / digest[:2] / digest[2:]
    stored.chmod(0o644)
    stored.write_bytes(manifest + b"tampered,0,base\n")
    shutil.rmtree(settings.root / ".dvc" / "cache")
    with pytest.raises(DataCorrupted, match="manifest.csv"):
        checkout(settings, f"models:/{name}/2", tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists() and not list(tmp_path.glob(".tampered-checkout-*"))

    # The command says so and exits 1; a version whose files are intact still checks out from it.
    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(settings.root))
    refused = CliRunner().invoke(app, ["data", "checkout", f"models:/{name}/2", "--to", str(tmp_path / "cli2")])
    assert refused.exit_code == 1 and "do not match" in " ".join(refused.output.split()), refused.output
    done = CliRunner().invoke(app, ["data", "checkout", f"models:/{name}@champion", "--to", str(tmp_path / "cli1")])
    assert done.exit_code == 0 and "md5s match" in " ".join(done.output.split()), done.output
    assert files_of(tmp_path / "cli1") == trained_on["1"]
