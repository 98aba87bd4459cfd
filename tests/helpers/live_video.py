"""A live video source for tests and benchmarks: an HTTP server that streams digits in real time, a slow model.

``LiveVideoServer`` plays an IP camera: each GET is answered with an MPEG-TS stream (MPEG-2 video, no B-frames)
encoded on the fly, frame ``i`` sent at ``i / fps`` seconds after the request — never faster than real time —
for ``seconds`` (then the response ends, as a camera that stops) or until the client goes away. ``SlowModel``
wraps a served model so that each frame costs ``seconds_per_frame`` more: a model slower than the camera.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import av
import numpy as np


class LiveVideoServer:
    """``images`` (H×W or H×W×3 uint8, sides multiple of 16) looped as a live stream at ``fps`` on 127.0.0.1."""

    def __init__(self, images: list[np.ndarray], fps: int, seconds: float | None) -> None:
        self.images = [np.repeat(i[:, :, None], 3, axis=2) if i.ndim == 2 else i for i in images]
        self.fps = fps
        self.seconds = seconds  # None: until the client disconnects
        self.requests = 0
        self.frames_sent = 0
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="live-video", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/live.ts"

    def __enter__(self) -> LiveVideoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _frames(self) -> Iterator[np.ndarray]:
        count = None if self.seconds is None else round(self.seconds * self.fps)
        index = 0
        while count is None or index < count:
            yield self.images[index % len(self.images)]
            index += 1

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        live = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                live.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Transfer-Encoding", "chunked")  # no length: the last chunk ends the stream
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    live._play(_Chunked(self.wfile))
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client went away

            def log_message(self, *args: object) -> None:
                return

        return Handler

    def _play(self, out: Any) -> None:
        with av.open(out, "w", format="mpegts") as container:
            stream = container.add_stream("mpeg2video", rate=self.fps)
            stream.height, stream.width = self.images[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = self.fps  # a keyframe a second: a late joiner waits at most that
            stream.codec_context.max_b_frames = 0  # no reordering delay
            started = time.monotonic()
            for index, image in enumerate(self._frames()):
                delay = started + index / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                    container.mux(packet)
                out.flush()
                self.frames_sent += 1
            for packet in stream.encode():
                container.mux(packet)


class _Chunked:
    """A response body in HTTP/1.1 chunks, each write one chunk sent at once (a camera does not buffer)."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def write(self, data: bytes) -> int:
        if data:
            self.out.write(b"%x\r\n%s\r\n" % (len(data), bytes(data)))
            self.out.flush()
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class SlowModel:
    """A served model whose ``predict`` takes ``seconds_per_frame`` longer per image; everything else is its own."""

    def __init__(self, model: Any, seconds_per_frame: float) -> None:
        self.model = model
        self.seconds_per_frame = seconds_per_frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def predict(self, images: list[np.ndarray]) -> Any:
        time.sleep(self.seconds_per_frame * len(images))
        return self.model.predict(images)
