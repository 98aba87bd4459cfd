"""Where MLflow artifacts and downloaded models go (issue 13, items 11 and 12): the tracking server's
store rather than a ``None/`` folder beside the project, and the state directory's model cache rather
than temporary folders left behind."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from helpers.project import VENV_BIN
from helpers.server import stop_group, wait_for

from visionloop.config import Settings
from visionloop.contracts import PromotionRecord
from visionloop.models.cache import load_project_version
from visionloop.models.tracking import client
from visionloop.promotion.audit import history, record_decision


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real ``mlflow server`` (SQLite store, artifacts served from a folder of its own); yields URL and folder."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home, artifacts = tmp_path / "mlflow-server", tmp_path / "mlflow-server" / "artifacts"
    artifacts.mkdir(parents=True)
    process = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
         "--serve-artifacts", "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None  # exited: fail below rather than wait

    try:
        wait_for(healthy, "the MLflow server", timeout=90, interval=0.5)
        assert process.poll() is None, "mlflow server exited"
        yield url, artifacts
    finally:  # the server and its workers: its own process group
        stop_group(process, timeout=15)


def test_records_logged_to_a_tracking_server_go_to_its_artifact_store(
    make_project: Callable[..., Path], mlflow_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reported bug: experiments created with artifact location ``None/…`` and a ``None/`` folder."""
    url, artifacts = mlflow_server
    root = make_project()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.chdir(root)  # where a relative "None/..." location would land
    settings = Settings.load(root)
    assert settings.artifact_root is None  # the server chooses

    record = PromotionRecord(model_name=settings.model_name, decision="assigned", from_version=None, to_version="1",
                             candidate_version="1", reason="test", trigger="test")
    run_id = record_decision(settings, record)

    experiment = client(settings).get_experiment_by_name(settings.params.mlflow.promotion_experiment)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    assert client(settings).get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    assert not (root / "None").exists() and not list(root.glob("**/mlruns"))
    assert list(artifacts.rglob("promotion_record.json"))  # in the server's store
    assert [r.created_at for r in history(settings)] == [record.created_at]


def test_loading_a_registered_version_twice_downloads_once_and_leaves_no_temporary_folder(
    trained_copy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # gettempdir() caches its answer

    first = load_project_version(trained_copy, "1")
    cached = trained_copy.state_dir / "models" / trained_copy.model_name / "1"
    marker = (cached / ".complete").stat()
    second = load_project_version(trained_copy, "1")

    assert first.classes == second.classes and (first.name, first.version) == (second.name, second.version)
    assert (cached / ".complete").stat().st_mtime_ns == marker.st_mtime_ns  # used the cache: no new download
    assert cached.stat().st_ino == (cached / "..").resolve().joinpath("1").stat().st_ino
    assert list(scratch.iterdir()) == []
    assert [p.name for p in cached.parent.iterdir()] == ["1"]  # no half download beside it
