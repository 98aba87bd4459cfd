"""One forward pass over frames, handed to the prediction log as ``source="stream"``.

The one implementation behind ``visionloop stream`` (``loop``) and the server's ``/stream`` WebSocket: both
classify canonical frames with the serving model and log them with the writer the server uses, so
monitoring and labeling see stream frames exactly like REST traffic, told apart by ``source``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from visionloop.store.records import PendingPredictions

if TYPE_CHECKING:
    from visionloop.models.bundle import ServableModel

STREAM_SOURCE = "stream"  # the prediction log's ``source`` of every frame classified here
STREAM_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")  # fits predictions.stream_id; safe in a path, a URL, a tag


def check_stream_id(text: str) -> str:
    """``text`` if it can name a stream in the log (``STREAM_ID``), else ``ValueError`` saying what can."""
    if not STREAM_ID.fullmatch(text):
        raise ValueError(f"a stream id is 1-200 letters, digits or . _ : -, got {text!r}")
    return text


@dataclass(frozen=True)
class FrameAnswers:
    """The model that answered, one prediction id per frame (as logged), and the N×C probabilities."""

    model: ServableModel
    prediction_ids: list[str]
    probabilities: np.ndarray

    def answer(self, k: int) -> dict[str, Any]:
        """Frame ``k``'s answer: prediction id, version, label, confidence, probabilities by class."""
        classes = list(self.model.classes)
        row = self.probabilities[k]
        best = int(row.argmax())
        return {
            "prediction_id": self.prediction_ids[k], "model_version": str(self.model.version),
            "label": classes[best], "confidence": float(row[best]),
            "probabilities": dict(zip(classes, row.tolist(), strict=True)),
        }


def classify_frames(
    model: ServableModel,
    images: list[np.ndarray],
    log_submit: Callable[[PendingPredictions], object] | None,
    *,
    stream_id: str,
    frame_ts: list[float],
) -> FrameAnswers:
    """Classify canonical frames in one forward pass and hand them to ``log_submit`` (the writer's ``submit``).

    ``stream_id`` and ``frame_ts`` (one per image, seconds of stream time) are logged with each frame, so the
    monitor can check one stream's window (``visionloop monitor --stream ID``).
    """
    predictions = model.predict(images)
    probabilities = np.asarray(predictions.probabilities, dtype=np.float64)
    ids = [str(uuid.uuid4()) for _ in images]
    if log_submit is not None:
        log_submit(
            PendingPredictions(
                ids=ids, created_at=datetime.now(UTC), model_name=model.name, model_version=str(model.version),
                classes=list(model.classes), reduction=model.reduction, images=images,
                probabilities=probabilities, embeddings=np.asarray(predictions.embeddings), source=STREAM_SOURCE,
                stream_id=stream_id, frame_ts=[float(t) for t in frame_ts],
            )
        )
    return FrameAnswers(model, ids, probabilities)
