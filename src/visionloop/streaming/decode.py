"""Frames out of a video source with PyAV (FFmpeg): a file, a capture device or a network stream.

``frames`` yields ``DecodedFrame`` (the stream time in seconds and the RGB pixels) and counts what was lost
in ``DecodeStats``: a packet the decoder refuses costs that packet (``decode_errors``), and a hole in the
timestamps — a damaged stretch the demuxer skipped — is counted in frames (``lost_frames``) from the stream's
frame rate. The end of the stream ends the iteration; a device or network source that fails to open or fails
mid-stream is reopened with exponential back-off (``Backoff``), given up after ``attempts`` failures in a row.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class SourceUnavailable(RuntimeError):
    """The source cannot be opened (a file that is not there or not a video, a network source given up)."""


@dataclass(frozen=True)
class Source:
    """What ``visionloop stream SOURCE`` names: ``kind`` is file, device or network."""

    spec: str
    kind: str
    url: str  # what PyAV opens
    format: str | None  # the demuxer to force (v4l2 for a device), None: FFmpeg's guess

    @property
    def live(self) -> bool:
        """A device or a network stream: frames arrive in real time and may be dropped to keep up."""
        return self.kind != "file"

    @property
    def stream_id(self) -> str:
        """A short stable name for the prediction log and the output: the file's stem, ``device0``, host/path
        (characters other than letters, digits and ``._-`` made ``_``)."""
        if self.kind == "device":
            return f"device{self.spec}"
        name = Path(self.spec).stem if self.kind == "file" else self.spec.split("://", 1)[1].split("?", 1)[0]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:64] or self.kind


def parse_source(spec: str) -> Source:
    """A device index (``0`` → ``/dev/video0``, opened with FFmpeg's V4L2 input, Linux), a URL with a network
    scheme, or a video file that exists. A device that is not there is refused now, not retried."""
    if spec.isdigit():
        device = f"/dev/video{int(spec)}"
        if not Path(device).exists():
            raise SourceUnavailable(f"no capture device {device} (SOURCE {spec} names a V4L2 camera; is one "
                                    "connected? `ls /dev/video*` lists them)")
        return Source(spec, "device", device, "v4l2")
    if spec.lower().startswith(NETWORK_SCHEMES):
        return Source(spec, "network", spec, None)
    if not Path(spec).is_file():
        raise SourceUnavailable(f"{spec!r} is not a video file, a device index or an rtsp/http(s) URL")
    return Source(spec, "file", spec, None)


@dataclass
class DecodeStats:
    """What decoding saw; ``lost_frames`` + ``decode_errors`` is what a corrupt stretch cost."""

    frames: int = 0  # decoded
    decode_errors: int = 0  # packets the decoder refused
    lost_frames: int = 0  # frames missing from the timestamps (skipped damage, dropped packets)
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)  # the last few reasons, for the summary

    def note(self, reason: str) -> None:
        self.errors = [*self.errors[-4:], reason]


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # position among the decoded frames of this run (0-based, across reconnects)
    timestamp: float  # seconds of stream time (presentation time)
    rgb: np.ndarray  # H×W×3 uint8
    decoded_at: float  # time.monotonic() when it came out of the decoder: where a live frame's latency starts


@dataclass
class Backoff:
    """Waits before reconnecting: ``initial`` doubling up to ``maximum``; ``attempts`` failures in a row end it."""

    initial: float
    maximum: float
    attempts: int
    sleep: Callable[[float], None] = time.sleep
    failures: int = 0

    def wait(self) -> bool:
        """Sleep before the next try; False when ``attempts`` tries in a row have failed (give up)."""
        if self.failures >= self.attempts:
            return False
        self.sleep(min(self.maximum, self.initial * 2**self.failures))
        self.failures += 1
        return True

    def reset(self) -> None:
        self.failures = 0


def frames(
    source: Source, stats: DecodeStats, backoff: Backoff, stop: Callable[[], bool], live_probe_s: float
) -> Iterator[DecodedFrame]:
    """Every decoded frame of ``source`` in order, until its end (a file) or ``stop()`` or giving up (live).

    A live source is opened after ``live_probe_s`` of analysis (FFmpeg's default, 5 s, would hold the first
    frames back and then hand them over in a burst the latency policy must drop).
    """
    import av  # FFmpeg: imported when a stream is decoded

    options = {"analyzeduration": str(round(live_probe_s * 1e6))} if source.live else {}

    index = 0
    offset = 0.0  # a reopened network stream restarts its clock: keep the run's timestamps increasing
    last = -1.0
    while not stop():
        try:
            container = av.open(source.url, format=source.format, options=options, timeout=(10.0, 10.0))
        except (av.FFmpegError, OSError) as error:
            stats.note(f"open: {error}")
            if source.kind == "file":
                raise SourceUnavailable(f"cannot open {source.spec!r} as a video: {error}") from None
            if not backoff.wait():
                raise SourceUnavailable(f"gave up on {source.spec!r} after {backoff.attempts} reconnects") from None
            stats.reconnects += 1
            continue
        try:
            for timestamp, rgb in _decode(container, stats, av):
                backoff.reset()
                timestamp += offset
                last = max(last, timestamp)
                yield DecodedFrame(index, timestamp, rgb, time.monotonic())
                index += 1
                if stop():
                    return
            return  # the end of the stream (a file, or a server that ended it cleanly)
        except (av.FFmpegError, OSError) as error:  # the connection dropped mid-stream
            stats.note(f"read: {error}")
            if source.kind == "file":
                return
        finally:
            container.close()
        offset = last + 1e-3
        if not backoff.wait():
            raise SourceUnavailable(f"gave up on {source.spec!r} after {backoff.attempts} reconnects")
        stats.reconnects += 1


def _decode(container: Any, stats: DecodeStats, av: Any) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds, RGB) of the first video stream; a refused packet is counted and skipped, holes in the
    timestamps counted as lost frames."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    base = stream.time_base
    previous: float | None = None
    for packet in container.demux(stream):
        try:
            decoded = packet.decode()
        except av.error.InvalidDataError as error:
            stats.decode_errors += 1
            stats.note(f"decode: {error}")
            continue
        for frame in decoded:
            seconds = float(frame.pts * base) if frame.pts is not None and base is not None else float(frame.time or 0)
            if rate is not None and previous is not None:
                stats.lost_frames += max(0, round((seconds - previous) * rate) - 1)
            previous = seconds
            stats.frames += 1
            yield seconds, frame.to_ndarray(format="rgb24")
