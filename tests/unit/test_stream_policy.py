"""The stream's sampling and live-latency policy (visionloop.streaming.policy / decode.Backoff), no video needed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.streaming.classify import check_stream_id
from visionloop.streaming.decode import Backoff, SourceUnavailable, parse_source
from visionloop.streaming.frames import canonical_frame, parse_roi
from visionloop.streaming.policy import FrameBuffer, Sampler


def test_sampler_keeps_one_frame_per_period_of_stream_time() -> None:
    sampler = Sampler(fps=5)
    kept = [i for i in range(30) if sampler.keep(i / 30)]  # a 30 fps second
    assert kept == [0, 6, 12, 18, 24]
    every = Sampler(fps=10)
    assert all(every.keep(i / 10) for i in range(20))  # a 10 fps source at --fps 10: every frame


def test_a_live_buffer_drops_late_and_overflowing_frames_and_counts_them() -> None:
    now = [0.0]
    buffer: FrameBuffer[int] = FrameBuffer(3, live=True, max_latency=0.5, clock=lambda: now[0])
    for frame in range(5):  # the model is busy: 2 are pushed out by newer frames, never block the decoder
        buffer.put(frame)
    assert buffer.drops.overflow == 2
    now[0] = 1.0  # a slow batch later: the waiting frames are too old; a new one arrives (full: 1 more out)
    buffer.put(99)
    assert buffer.take(8) == [99]
    assert buffer.drops.late == 2 and buffer.drops.overflow == 3
    buffer.close()
    assert buffer.take(8) is None


def test_a_file_buffer_waits_for_room_and_loses_nothing() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(2, live=False, max_latency=0.001)
    producer = threading.Thread(target=lambda: ([buffer.put(i) for i in range(7)], buffer.close()))
    producer.start()
    taken = []
    while (batch := buffer.take(2)) is not None:
        taken.extend(batch)
    producer.join()
    assert taken == list(range(7)) and buffer.drops.late == buffer.drops.overflow == 0


def test_backoff_doubles_up_to_the_maximum_then_gives_up() -> None:
    waits: list[float] = []
    backoff = Backoff(0.5, 2.0, 4, sleep=waits.append)
    assert [backoff.wait() for _ in range(5)] == [True, True, True, True, False]
    assert waits == [0.5, 1.0, 2.0, 2.0]
    backoff.reset()
    assert backoff.wait() and waits[-1] == 0.5


def test_sources_and_regions_are_parsed_or_refused_clearly(tmp_path: Path) -> None:
    camera = parse_source("rtsp://127.0.0.1:8554/line/cam1?x=1")
    assert camera.live and camera.stream_id == "127.0.0.1_8554_line_cam1"
    with pytest.raises(SourceUnavailable):
        parse_source(str(tmp_path / "missing.mp4"))
    video = tmp_path / "line 3 (night).mkv"
    video.write_bytes(b"")
    assert parse_source(str(video)).stream_id == "line_3_night"  # a name the log and `monitor --stream` take
    assert check_stream_id("line-3:cam.1") == "line-3:cam.1"
    with pytest.raises(ValueError, match="stream id"):
        check_stream_id("a b")
    assert parse_roi("1,2,3,4") == (1, 2, 3, 4)
    with pytest.raises(ValueError):
        parse_roi("1,2,0,4")
    frame = np.zeros((10, 12, 3), np.uint8)
    assert canonical_frame(frame, 1, (2, 3, 4, 5)).shape == (5, 4)
    with pytest.raises(ValueError):
        canonical_frame(frame, 3, (10, 0, 4, 4))


def test_a_camera_that_is_not_there_is_a_clear_error_not_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """No camera on the test machines: a device index whose /dev/videoN is missing exits 2 at once, saying so."""
    index = next(i for i in range(64) if not Path(f"/dev/video{i}").exists())
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    result = CliRunner().invoke(app, ["stream", str(index)])
    assert result.exit_code == 2
    assert f"no capture device /dev/video{index}" in result.output and "ls /dev/video*" in result.output
