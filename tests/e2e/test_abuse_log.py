"""The prediction log never loses what a real `visionloop serve` answered (issue 13, items 2, 5, 6).

Each test starts the server as a subprocess in a session of its own over a copy of the session's
trained project, sends real traffic, hurts it the way production does — the writer child killed, the
process group stopped by SIGTERM or Ctrl-C, a writer far behind — and then checks the log (after a
restart where the server was stopped) holds every prediction the server answered.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from helpers.images import png
from helpers.project import VENV_BIN, copy_project
from helpers.server import wait_for
from helpers.traffic import unseen_images

from visionloop.config import Settings
from visionloop.store.predlog import PredictionLog


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Settings:
    return copy_project(trained_project, tmp_path / "project")


@pytest.fixture(scope="module")
def images(trained_project: Path) -> list[bytes]:
    pictures, _ = unseen_images(Settings.load(trained_project))
    return [png(image) for image in pictures[:64]]


def set_serving(settings: Settings, **values: object) -> None:
    path = settings.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["serving"].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


class Server:
    def __init__(self, process: subprocess.Popen, url: str, stderr: Path) -> None:
        self.process, self.url, self.stderr = process, url, stderr

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def writer_pid(self) -> int:
        """The prediction-log writer: the server's child started by multiprocessing's spawn."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid and b"spawn_main" in cmdline:
                return int(entry.name)
        raise AssertionError("no prediction-log writer process")


@contextmanager
def serving(settings: Settings) -> Iterator[Server]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stderr = settings.root / f"serve-{port}.log"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    with open(stderr, "wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "visionloop"), "serve", "--port", str(port), "--log-level", "warning"],
            cwd=settings.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", stderr)

    def ready() -> bool:
        assert process.poll() is None, stderr.read_text()[-3000:]
        try:
            return httpx.get(f"{server.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "the server to be ready", timeout=120, interval=0.2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class Traffic:
    """Clients posting /predict until stopped; every id the server answered is kept."""

    def __init__(self, server: Server, images: list[bytes], clients: int = 3, per_request: int = 4) -> None:
        self.server, self.images, self.per_request = server, images, per_request
        self.answered: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            while not self.stop.is_set():
                chosen = rng.choice(len(self.images), self.per_request, replace=False)
                files = [("files", (f"{i}.png", self.images[i], "image/png")) for i in chosen]
                try:
                    response = client.post("/predict", files=files)
                except httpx.HTTPError:
                    return  # the server is stopping
                if response.status_code == 200:
                    self.answered += [p["prediction_id"] for p in response.json()["predictions"]]


def logged(settings: Settings) -> list[str]:
    plog = PredictionLog(settings.db_url)
    try:
        return plog.read_window()["id"].tolist()
    finally:
        plog.dispose()


def settle(server: Server) -> dict:
    """/health once everything answered is written."""
    return wait_for(lambda: (h := server.health())["log"]["queued"] == 0 and h["prediction_log"] == "ok" and h,
                    "the log to catch up", timeout=120, interval=0.1)


def test_a_killed_writer_is_restarted_and_degraded_meanwhile(project: Settings, images: list[bytes]) -> None:
    with serving(project) as server, Traffic(server, images) as traffic:
        wait_for(lambda: len(traffic.answered) >= 40, "traffic", timeout=60)
        os.kill(server.writer_pid(), signal.SIGKILL)
        down = wait_for(lambda: (h := server.health())["prediction_log"] == "degraded" and h,
                        "/health to say the log is degraded", timeout=20, interval=0.01)
        assert "exited" in down["log"]["last_error"] and down["status"] == "ok"
        assert httpx.get(f"{server.url}/ready", timeout=5).status_code == 200  # answers still go out
        answered_while_down = len(traffic.answered)
        wait_for(lambda: server.health()["prediction_log"] == "ok", "the writer to be back", timeout=60)
        wait_for(lambda: len(traffic.answered) >= answered_while_down + 40, "traffic after the restart", timeout=60)
        traffic.stop.set()
        time.sleep(0.5)  # the last requests in flight are answered
        health = settle(server)
        assert health["log"]["restarts"] == 1 and health["log"]["dropped"] == 0
        answered = list(traffic.answered)
    stored = logged(project)
    assert set(answered) <= set(stored) and len(stored) == len(set(stored))


@pytest.mark.parametrize(("stop", "drain_seconds"), [(signal.SIGTERM, 0), (signal.SIGINT, 10)],
                         ids=["sigterm-no-time-to-drain", "ctrl-c-drains"])
def test_a_stopped_server_keeps_every_answered_prediction(
    project: Settings, images: list[bytes], stop: signal.Signals, drain_seconds: int
) -> None:
    """SIGTERM (what `visionloop down` sends) or Ctrl-C to the whole process group, right after traffic."""
    set_serving(project, drain_seconds=drain_seconds)
    with serving(project) as server:
        with Traffic(server, images, clients=4, per_request=8) as traffic:
            wait_for(lambda: len(traffic.answered) >= 200, "traffic", timeout=120)
            if drain_seconds == 0:  # a writer that is behind when the stop comes, whatever this machine's speed
                os.kill(server.writer_pid(), signal.SIGSTOP)
                behind = len(traffic.answered) + 20
                wait_for(lambda: len(traffic.answered) >= behind, "answers the stopped writer has not written",
                         timeout=60)
            os.killpg(server.process.pid, stop)
            assert server.process.wait(60) in (0, -stop)  # uvicorn stops gracefully, then re-raises the signal
            answered = list(traffic.answered)
        output = server.stderr.read_text()
        assert "Traceback" not in output, output[-3000:]
    spooled = list((project.state_dir / "spool").glob("*.jsonl"))
    if drain_seconds == 0:
        assert spooled, "nothing was left to spill: the test did not stop a writer that was behind"
    else:
        assert set(answered) <= set(logged(project)) and not spooled  # drained in time
    with serving(project) as again:  # the spool is replayed at the next start
        health = settle(again)
    stored = logged(project)
    assert set(answered) <= set(stored) and len(stored) == len(set(stored))
    if spooled:
        assert health["log"]["replayed"] > 0
    assert not list((project.state_dir / "spool").glob("*.jsonl"))


def test_feedback_right_after_predict_is_accepted_while_the_writer_is_behind(
    project: Settings, images: list[bytes]
) -> None:
    with serving(project) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        writer = server.writer_pid()
        os.kill(writer, signal.SIGSTOP)  # the writer falls behind: nothing is written until it resumes
        try:
            answer = client.post("/predict", files=[("files", ("a.png", images[0], "image/png"))]).json()
            prediction_id = answer["predictions"][0]["prediction_id"]
            response = client.post("/feedback", json={"prediction_id": prediction_id, "label": "7"})
            assert response.status_code == 200 and response.json()["stored"] is True, response.text
            unknown = client.post("/feedback", json={"prediction_id": "never-issued", "label": "7"})
            assert unknown.status_code == 404
            assert prediction_id not in logged(project)  # it really was behind
        finally:
            os.kill(writer, signal.SIGCONT)
        settle(server)
    plog = PredictionLog(project.db_url)
    try:
        stored = plog.get(prediction_id)
    finally:
        plog.dispose()
    assert stored is not None and stored.feedback_label == "7"
