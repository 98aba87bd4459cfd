"""``/stream``: a WebSocket that takes a live stream of frames and answers each one.

For clients that push video: each binary message is one encoded frame (JPEG or PNG); the answer to each is
one JSON text message, in order — ``{"index", "prediction_id", "model_version", "label", "confidence",
"probabilities"}``, or ``{"index", "error", "error_code"}`` for a frame refused (over ``stream.max_frame_bytes``,
over ``serving.max_pixels``, not an image). A refused frame costs only itself; the connection stays open.
Frames are classified by the serving model (hot-swapped: read per frame) and logged like ``/predict``, with
``source="stream"`` (``streaming.classify``, the same code as ``visionloop stream``), the connection's stream id
(``/stream?stream_id=line-3``; default ``ws-`` and 8 random hex digits) and each frame's time: seconds since the
connection was accepted, when the frame arrived. Every answer carries both (``stream_id``, ``frame_ts``), so
``visionloop monitor --stream ID`` can check that stream alone.

``RequestGuard`` sees only HTTP requests, so the handshake is checked here with its rules: the Host allow-list,
a same-origin ``Origin`` when one is sent (a page of another site cannot drive the socket), and the bearer
token when one is set. A refused handshake is closed before it is accepted (the client sees HTTP 403).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status
from starlette.datastructures import State

from visionloop.data.images import TOO_LARGE, InvalidImage, canonicalize_image_bytes
from visionloop.params import Params
from visionloop.serving.guards import allowed_hosts, hostname_of, same_origin, token_matches
from visionloop.streaming.classify import check_stream_id, classify_frames

log = logging.getLogger(__name__)

router = APIRouter(tags=["stream"])

NOT_BINARY = "not_binary"
NO_MODEL = "no_model"


def handshake_refusal(websocket: WebSocket) -> str | None:
    """Why the connection is refused (host, origin, token, a malformed ``stream_id``), or None."""
    state = websocket.app.state
    serving = state.settings.params.serving
    host = websocket.headers.get("host")
    hosts = allowed_hosts(serving.host, serving.allowed_hosts)
    if host is not None and hosts is not None and hostname_of(host) not in hosts:
        return f"host {host!r} is not served here (serving.allowed_hosts)"
    origin = websocket.headers.get("origin")
    if origin is not None and (host is None or not same_origin(origin, host)):
        return "cross-origin WebSocket refused: its Origin is not this server"
    if state.token and not token_matches(websocket.headers.get("authorization"), state.token.encode()):
        return "missing or invalid bearer token"
    try:
        check_stream_id(websocket.query_params.get("stream_id", "ws-default"))
    except ValueError as error:
        return str(error)
    return None


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """One JSON answer per binary frame, in order, until the client closes."""
    refusal = handshake_refusal(websocket)
    if refusal is not None:
        log.warning("refused a /stream connection: %s", refusal)
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=refusal)
        return
    stream_id = websocket.query_params.get("stream_id", f"ws-{uuid.uuid4().hex[:8]}")  # checked above
    await websocket.accept()
    opened = time.monotonic()
    state = websocket.app.state
    params = state.settings.params
    index = 0
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = Frame(index, stream_id, round(time.monotonic() - opened, 6))
            await websocket.send_json(await _answer(message.get("bytes"), frame, state, params))
            index += 1
    except WebSocketDisconnect:
        return


@dataclass(frozen=True)
class Frame:
    """Where a received frame sits: its index on the connection, the stream, its time (s since accepted)."""

    index: int
    stream_id: str
    ts: float


async def _answer(data: bytes | None, frame: Frame, state: State, params: Params) -> dict[str, Any]:
    """The answer to ``frame``: its prediction, or why it was refused."""
    index = frame.index
    if data is None:
        return {"index": index, "error": "send each frame as a binary message (JPEG or PNG bytes)",
                "error_code": NOT_BINARY}
    if len(data) > params.stream.max_frame_bytes:
        return {"index": index, "error": f"frame of {len(data):,} bytes is over the limit of "
                f"{params.stream.max_frame_bytes:,} (stream.max_frame_bytes)", "error_code": TOO_LARGE}
    model = state.manager.current()
    if model is None:
        return {"index": index, "error": "no model version is loaded yet; see GET /ready", "error_code": NO_MODEL}
    try:
        image = await asyncio.to_thread(
            canonicalize_image_bytes, data, channels=model.channels, min_side=params.data.min_side,
            max_pixels=params.serving.max_pixels,
        )
    except InvalidImage as error:
        return {"index": index, "error": error.reason, "error_code": error.code}
    answers = await asyncio.to_thread(classify_frames, model, [image.array], state.writer.submit,
                                      stream_id=frame.stream_id, frame_ts=[frame.ts])
    return {"index": index, "stream_id": frame.stream_id, "frame_ts": frame.ts, **answers.answer(0)}
