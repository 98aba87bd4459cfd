"""S3-compatible storage (issue 15), against a real S3 endpoint (moto's server mode): the DVC remote as
``s3://bucket/path`` with an endpoint URL, and MLflow's artifact store behind the proxied MLflow server,
whose clients hold no storage credentials."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from helpers.project import VENV_BIN
from helpers.s3 import ACCESS_KEY, SECRET_KEY, S3Endpoint, s3_endpoint
from helpers.server import stop_group, wait_for
from PIL import Image

from visionloop.config import Settings
from visionloop.contracts import DATA_VERSION_FILE
from visionloop.data.dvcrepo import keep_data_version
from visionloop.data.lineage import data_version
from visionloop.data.restore import restore

CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
               "MLFLOW_S3_ENDPOINT_URL")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_dvc_remote_on_s3_keeps_a_data_version_and_restores_it(
    make_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = make_project()
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        folder = root / "data" / "raw" / label
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    originals = files_of(root / "data" / "raw")

    with s3_endpoint("visionloop-dvc") as s3:
        for key, value in s3.env.items():  # DVC's S3 client reads the keys from its usual chain
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("VISIONLOOP_DVC_REMOTE", "s3://visionloop-dvc/team/dvc")
        monkeypatch.setenv("VISIONLOOP_DVC_ENDPOINT", s3.url)
        settings = Settings.load(root)
        version = data_version(root, root / "data" / "raw")
        dvc_file = keep_data_version(settings, version)

        keys = s3.keys("visionloop-dvc", "team/dvc/files/md5/")
        md5 = version.dvc_hash
        assert f"team/dvc/files/md5/{md5[:2]}/{md5[2:]}" in keys and len(keys) == len(originals) + 1
        config = (root / ".dvc" / "config.local").read_text()
        assert s3.url in config and "s3://visionloop-dvc/team/dvc" in config
        assert ACCESS_KEY not in config and SECRET_KEY not in config  # keys are never written to disk

        for folder in (root / ".dvc" / "cache", root / "data" / "raw"):
            shutil.rmtree(folder)
        restored = restore(settings, yaml.safe_load(dvc_file)["outs"][0], tmp_path / "restored")

    assert restored.fetched == len(keys) and restored.dvc_hash == md5
    assert files_of(tmp_path / "restored") == originals


@contextmanager
def mlflow_server(home: Path, destination: str, s3: S3Endpoint) -> Iterator[str]:
    """``mlflow server --serve-artifacts`` storing artifacts at ``destination`` on ``s3``: the server alone
    holds the S3 endpoint and keys. Yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home.mkdir(parents=True)
    env = {**{k: v for k, v in os.environ.items() if k not in CREDENTIALS}, **s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.url}
    with open(home / "server.log", "wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", destination, "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"],
            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    try:
        wait_for(healthy, "the MLflow server", timeout=90, interval=0.5)
        assert process.poll() is None, (home / "server.log").read_text()[-2000:]
        yield url
    finally:
        stop_group(process, timeout=15)


def test_a_version_stored_on_s3_behind_the_mlflow_server_loads_and_checks_out_without_credentials(
    trained_copy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from visionloop.models.cache import load_registered
    from visionloop.training import pipeline

    for key in CREDENTIALS:  # this process is a client: no storage credentials, no S3 endpoint
        monkeypatch.delenv(key, raising=False)
    with s3_endpoint("visionloop-mlflow") as s3, \
            mlflow_server(tmp_path / "mlflow", "s3://visionloop-mlflow/artifacts", s3) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        settings = Settings.load(trained_copy.root).with_overrides({"train": {"epochs": 1,
                                                                               "limit_train_fraction": 0.2}})
        local = set(settings.state_dir.glob("mlartifacts/**/*"))  # the template's own run, trained before
        pipeline.train_step(settings, trigger="test")
        pipeline.evaluate_step(settings)
        registered = pipeline.register_step(settings, trigger="test")
        assert (registered["version"], registered["aliases"]) == ("1", ["champion"])

        stored = s3.keys("visionloop-mlflow", "artifacts/")
        for artifact in ("bundle/state_dict.pt", "MLmodel", DATA_VERSION_FILE):  # the bundle, the model, the data
            assert any(key.endswith(f"/{artifact}") for key in stored), (artifact, stored)
        assert set(settings.state_dir.glob("mlartifacts/**/*")) == local  # nothing new stored locally

        model = load_registered(settings, f"models:/{settings.model_name}@champion")  # through the server
        assert (model.version, len(model.classes)) == ("1", 10)

        # The command, in a process with no credentials at all, restores the version's data via the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MLFLOW_S3_ENDPOINT_URL"}
        result = subprocess.run(
            [str(VENV_BIN / "visionloop"), "data", "checkout", f"models:/{settings.model_name}/1", "--to",
             str(tmp_path / "data")],
            cwd=settings.root, env={**env, "VISIONLOOP_PROJECT_DIR": str(settings.root)}, capture_output=True,
            text=True, timeout=300,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "md5s match" in " ".join(result.stdout.split())
    assert files_of(tmp_path / "data") == files_of(settings.path("data/raw"))
