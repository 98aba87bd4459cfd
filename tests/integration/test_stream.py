"""Streamed video (issue 17): `visionloop stream` on generated digit videos, and the server's /stream WebSocket.

The videos are written by the tests with PyAV (tests/helpers/video.py): 100 held-out digits at 10 fps.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.images import png
from helpers.live_video import LiveVideoServer, SlowModel
from helpers.models import DigitsCNN
from helpers.project import REPO
from helpers.server import wait_for
from helpers.video import corrupt_middle, decoded_frames, extract_frames, write_digit_video
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.store.predlog import PredictionLog
from visionloop.streaming.decode import parse_source
from visionloop.streaming.loop import StreamOptions, run_stream
from visionloop.streaming.output import open_sink

FRAMES = 100  # 10 s at 10 fps


@pytest.fixture(scope="module")
def video(digits: DigitsCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_video(tmp_path_factory.mktemp("video") / "digits.mkv", digits.images[:FRAMES], fps=10)


def test_stream_labels_equal_predict_batch_and_every_frame_is_logged(
    video: Path, trained_copy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The champion (followed like the server does) labels each frame as predict-batch labels it saved as PNG;
    the frames are logged with their stream and time, drawn into --annotate's video, and monitored alone."""
    monkeypatch.chdir(trained_copy.root)
    db = tmp_path / "predictions.db"
    monkeypatch.setenv("VISIONLOOP_DB_URL", f"sqlite:///{db}")
    runner = CliRunner()
    streamed = tmp_path / "stream.jsonl"
    annotated = tmp_path / "annotated.mp4"
    result = runner.invoke(app, ["stream", str(video), "--output", str(streamed), "--fps", "10", "--batch-size", "16",
                                 "--annotate", str(annotated)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in streamed.read_text().splitlines()]
    assert [row["frame_index"] for row in rows] == list(range(FRAMES))
    assert rows[-1]["timestamp"] == pytest.approx(9.9)
    assert {row["stream_id"] for row in rows} == {"digits"}

    frames = extract_frames(video, tmp_path / "frames")
    batch_out = tmp_path / "batch.parquet"
    result = runner.invoke(app, ["predict-batch", str(tmp_path / "frames"), "-o", str(batch_out), "--no-progress"])
    assert result.exit_code == 0, result.output
    batch = pd.read_parquet(batch_out)
    by_file = dict(zip(batch["path"].map(lambda p: Path(p).stem), batch["label"].astype(str), strict=True))
    assert len(frames) == FRAMES
    assert [row["label"] for row in rows] == [by_file[f"{i:05d}"] for i in range(FRAMES)]

    plog = PredictionLog(f"sqlite:///{db}")
    try:
        logged = plog.read_window()
    finally:
        plog.dispose()
    assert len(logged) == FRAMES and set(logged["source"]) == {"stream"}
    assert set(logged["id"]) == {row["prediction_id"] for row in rows}
    assert set(logged["stream_id"]) == {"digits"}
    assert dict(zip(logged["id"], logged["frame_ts"], strict=True)) == {
        row["prediction_id"]: pytest.approx(row["timestamp"]) for row in rows}

    # --annotate: one output frame per classified frame, enlarged, the answer written in a band at the top
    drawn = decoded_frames(annotated)
    assert len(drawn) == FRAMES and drawn[0].shape == (256, 256, 3)  # 32 px × 8 (stream.annotate_min_side)
    source = np.kron(decoded_frames(video)[0], np.ones((8, 8, 1), np.uint8)).astype(int)
    band = 256 // 8  # annotate.draw_answer: an eighth of the height
    difference = np.abs(drawn[0].astype(int) - source)
    assert (difference[:band] > 100).mean() > 0.02  # white text on the band, where the source is dark
    assert difference[band + 8 :].mean() < 12  # below it, the digit itself (lossy H.264/MPEG-4)

    monitor_one_stream(runner, f"sqlite:///{db}", logged)


def monitor_one_stream(runner: CliRunner, db_url: str, logged: pd.DataFrame) -> None:
    """`monitor --stream ID` checks that stream's frames alone, and remembers its checks apart from the version's."""
    from visionloop.monitoring.checks import nothing_new

    version = logged["model_version"].iloc[0]
    plog = PredictionLog(db_url)
    try:  # REST traffic of the same version beside the stream: not in the stream's window
        plog.write([replace(plog.get(i), id=str(uuid.uuid4()), source="rest", stream_id=None, frame_ts=None)
                    for i in logged["id"][:30]])
    finally:
        plog.dispose()
    checked = json.loads(runner.invoke(app, ["monitor", "--stream", "digits", "--json", "--no-performance"]).stdout)
    assert checked["status"] in {"ok", "drift"} and checked["stream_id"] == "digits"
    assert checked["n_window"] == FRAMES and "in stream 'digits'" in checked["message"]
    again = json.loads(runner.invoke(app, ["monitor", "--stream", "digits", "--json", "--no-performance"]).stdout)
    assert again["status"] == "no_new_data"
    assert nothing_new(db_url, logged["model_name"].iloc[0], version)[1] is False  # the version: never checked
    other = json.loads(runner.invoke(app, ["monitor", "--stream", "nowhere", "--json", "--no-performance"]).stdout)
    assert other["status"] == "not_enough_data" and other["n_window"] == 0


def test_a_corrupt_stretch_costs_only_its_frames(video: Path, digits: DigitsCNN, tmp_path: Path) -> None:
    """The middle fifth of the file is random bytes: the frames after it are still classified, the loss counted."""
    bad = corrupt_middle(video, tmp_path / "bad.mkv")
    model = ServableModel.from_dir(digits.bundle, name="digits", version="1")
    options = StreamOptions.from_params(Settings.load(REPO).params.stream.model_copy(update={"fps": 10}))
    sink = open_sink(str(tmp_path / "bad.parquet"))
    summary = run_stream(parse_source(str(bad)), options, get_model=lambda: model, sink=sink)
    sink.close()
    rows = pd.read_parquet(tmp_path / "bad.parquet")
    assert summary.ended == "end" and summary.failed_batches == 0
    assert 0 < summary.classified == len(rows) < FRAMES
    assert summary.classified + summary.lost_frames == FRAMES  # every missing frame is counted
    assert rows["timestamp"].max() == pytest.approx(9.9)  # the frames after the damage were read
    assert {f"prob_{c}" for c in model.classes} <= set(rows.columns)


def test_websocket_answers_each_frame_and_refuses_bad_ones(
    digits: DigitsCNN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from visionloop.serving.app import create_app
    from visionloop.serving.sources import LocalBundleSource

    monkeypatch.setenv("VISIONLOOP_DB_URL", f"sqlite:///{tmp_path / 'predictions.db'}")
    monkeypatch.setenv("VISIONLOOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VISIONLOOP_TOKEN", "s3cret")
    settings = Settings.load(REPO, overrides={"serving": {"log_writer": "thread"}, "stream": {"max_frame_bytes": 4000}})
    served = create_app(settings, LocalBundleSource(digits.bundle))
    auth = {"Authorization": "Bearer s3cret"}
    url = "ws://127.0.0.1/stream"  # the handshake is checked against the Host allow-list, as every request
    with TestClient(served, base_url="http://127.0.0.1") as client:
        wait_for(lambda: client.get("/ready").status_code == 200, "the model to load")
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(url):
            pass
        assert refused.value.code == 1008 and "token" in refused.value.reason
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(
            url, headers={**auth, "Origin": "http://evil.example"}
        ):
            pass
        assert "cross-origin" in refused.value.reason
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/stream", headers=auth):
            pass
        assert "not served here" in refused.value.reason  # Host: testserver
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(
            f"{url}?stream_id=a%20b", headers=auth
        ):
            pass
        assert "stream id" in refused.value.reason
        with client.websocket_connect(f"{url}?stream_id=line-3", headers=auth) as socket:
            answers = []
            for image in digits.images[:5]:
                socket.send_bytes(png(image))
                answers.append(socket.receive_json())
            socket.send_bytes(b"not an image")
            broken = socket.receive_json()
            socket.send_bytes(b"\x89PNG" + bytes(5000))
            too_big = socket.receive_json()
            socket.send_text("hello")
            text = socket.receive_json()
            socket.send_bytes(png(digits.images[5]))
            after = socket.receive_json()
        served.state.writer.flush(10)
        plog = served.state.writer.log
        logged = plog.read_window()
    assert [a["index"] for a in answers] == list(range(5)) and after["index"] == 8
    assert sum(a["label"] == str(y) for a, y in zip(answers, digits.labels, strict=False)) >= 4
    assert broken["error_code"] == "not_an_image" and too_big["error_code"] == "too_large"
    assert text["error_code"] == "not_binary" and "label" in after
    assert len(logged) == 6 and set(logged["source"]) == {"stream"} and set(logged["stream_id"]) == {"line-3"}
    assert set(logged["id"]) == {a["prediction_id"] for a in [*answers, after]}
    times = [a["frame_ts"] for a in [*answers, after]]
    assert times == sorted(times) and {a["stream_id"] for a in answers} == {"line-3"}
    assert dict(zip(logged["id"], logged["frame_ts"], strict=True)) == {
        a["prediction_id"]: a["frame_ts"] for a in [*answers, after]}


def test_a_dropped_network_stream_is_reopened_and_a_live_source_drops_rather_than_queues(
    video: Path, digits: DigitsCNN, tmp_path: Path
) -> None:
    """An HTTP server cuts the first response halfway: the stream is reopened (counted) and read to its end.

    Read over the network the source is live: frames arrive faster than the model takes them, and the surplus
    is dropped and counted instead of queued.
    """
    import http.server
    import threading

    data = video.read_bytes()
    requests: list[int] = []

    class Cut(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requests.append(1)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data if len(requests) > 1 else data[: len(data) // 2])
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cut)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    model = ServableModel.from_dir(digits.bundle, name="digits", version="1")
    params = Settings.load(REPO).params.stream
    options = StreamOptions.from_params(params.model_copy(update={"fps": 10, "reconnect_initial_s": 0.05}))
    sink = open_sink(str(tmp_path / "http.jsonl"))
    try:
        summary = run_stream(parse_source(f"http://127.0.0.1:{server.server_address[1]}/digits.mkv"), options,
                             get_model=lambda: model, sink=sink)
    finally:
        sink.close()
        server.shutdown()
    assert summary.ended == "end" and summary.reconnects == 1 and len(requests) == 2
    assert summary.decoded > FRAMES  # the first half, then the whole video again
    assert summary.classified + summary.dropped_late + summary.dropped_overflow == summary.sampled
    assert summary.classified == len((tmp_path / "http.jsonl").read_text().splitlines()) > 0


def test_a_live_source_faster_than_the_model_drops_frames_and_keeps_latency_bounded(
    digits: DigitsCNN, tmp_path: Path
) -> None:
    """An HTTP camera (MPEG-TS in real time, 10 fps for 4 s) and a model that takes 0.2 s a frame: half the
    frames cannot be classified. They are dropped and counted; no classified frame waited more than
    --max-latency, and none was answered later than that plus one forward pass of its batch."""
    model = SlowModel(ServableModel.from_dir(digits.bundle, name="digits", version="1"), seconds_per_frame=0.2)
    model.model.predict(digits.images[:2])  # warm, as a served model is: the first forward pays one-off set-up
    params = Settings.load(REPO).params.stream
    options = StreamOptions.from_params(params.model_copy(update={"fps": 10, "batch_size": 2, "max_latency_ms": 300}))
    sink = open_sink(str(tmp_path / "live.jsonl"))
    with LiveVideoServer(digits.images[:40], fps=10, seconds=4) as server:
        try:
            summary = run_stream(parse_source(server.url), options, get_model=lambda: model, sink=sink)
        finally:
            sink.close()
    assert summary.ended == "end" and server.frames_sent == 40
    assert summary.decoded >= 35  # the stream's first frames may precede its first keyframe
    dropped = summary.dropped_late + summary.dropped_overflow
    assert dropped >= 10 and summary.classified + dropped == summary.sampled
    assert summary.classified == len((tmp_path / "live.jsonl").read_text().splitlines()) >= 10
    assert summary.wait_ms_max <= 300 + 50  # the policy: older than --max-latency when batched is dropped
    # plus one batch (2 frames at 0.2 s), plus slack: on 2 shared cores threads wait to be scheduled
    assert summary.latency_ms_max <= 300 + 2 * 200 + 500
