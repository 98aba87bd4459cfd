"""Log entries the writer could not write before a stop, kept on disk and replayed at the next start.

A server that stops (SIGTERM, Ctrl-C) drains its prediction-log queue for ``serving.drain_seconds``;
what is still unwritten then is spilled here, one JSON line per entry, into a file of its own under
``<state dir>/spool/`` (written to a temporary name, synced and renamed, so a file either is whole or
does not exist). The next writer replays every file, oldest first, before new traffic, and deletes a
file once all of its entries are written. Replaying an entry that was in fact written already is
harmless: ``PredictionLog.write`` skips ids it holds.

Several writers share one spool (the workers of ``serve --workers N``): a writer replays only the files it
could lock (``.<name>.lock``, released by the kernel if it dies), so no file is replayed by two at once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from visionloop.locks import release, try_lock
from visionloop.store.records import LogEntry, PendingFeedback, PendingPredictions, PendingShadow

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
SPOOL_VERSION = 1  # the form of one line; a file of another version is set aside, not misread


def spill(spool_dir: Path, entries: list[LogEntry]) -> Path:
    """Write ``entries`` to a new spool file, atomically; returns its path."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = spool_dir / f"{stamp}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    partial = path.with_name(f".{path.name}.part")
    with open(partial, "w", encoding="utf-8") as file:
        for entry in entries:
            file.write(json.dumps(_encode(entry), separators=(",", ":")) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    return path


def load(spool_dir: Path, claims: dict[Path, int] | None = None) -> list[tuple[Path, list[LogEntry]]]:
    """Every spool file under ``spool_dir``, oldest first, with its entries.

    With ``claims``, only the files no other writer holds: each is locked and its lock put in ``claims``
    until ``discard``. A file that cannot be read is renamed ``*.bad`` (kept for an operator, never replayed twice).
    """
    if not spool_dir.is_dir():
        return []
    files = []
    for path in sorted(spool_dir.glob(f"*{SUFFIX}")):
        if claims is not None:
            fd = try_lock(_lock_path(path))
            if fd is None:  # another writer is replaying it
                continue
            claims[path] = fd
            if not path.exists():  # replayed and deleted by another writer since the listing
                discard(path, claims)
                continue
        try:
            with open(path, encoding="utf-8") as file:
                entries = [_decode(json.loads(line)) for line in file if line.strip()]
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.error("cannot replay the spooled log entries in %s (%s); kept as %s.bad", path, error, path.name)
            path.rename(path.with_name(f"{path.name}.bad"))
            if claims is not None:
                discard(path, claims)
            continue
        files.append((path, entries))
    return files


def discard(path: Path, claims: dict[Path, int]) -> None:
    """Delete a replayed spool file and let go of its claim."""
    path.unlink(missing_ok=True)
    fd = claims.pop(path, None)
    if fd is not None:
        _lock_path(path).unlink(missing_ok=True)
        release(fd)


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _encode(entry: LogEntry) -> dict[str, Any]:
    if isinstance(entry, PendingFeedback):
        return {"v": SPOOL_VERSION, "kind": "feedback", "prediction_id": entry.prediction_id, "label": entry.label,
                "at": entry.at.isoformat()}
    if isinstance(entry, PendingShadow):
        fields = {**entry.__dict__, "created_at": entry.created_at.isoformat(),
                  "probabilities": _array(entry.probabilities), "embeddings": _array(entry.embeddings)}
        return {"v": SPOOL_VERSION, "kind": "shadow", **fields}
    return {
        "v": SPOOL_VERSION,
        "kind": "predictions",
        "ids": entry.ids,
        "created_at": entry.created_at.isoformat(),
        "model_name": entry.model_name,
        "model_version": str(entry.model_version),
        "classes": entry.classes,
        "reduction": entry.reduction,
        "images": [_array(image) for image in entry.images],
        "probabilities": _array(entry.probabilities),
        "embeddings": _array(entry.embeddings),
        "source": entry.source,
        "stream_id": entry.stream_id,
        "frame_ts": entry.frame_ts,
    }


def _decode(item: dict[str, Any]) -> LogEntry:
    if item["v"] != SPOOL_VERSION:
        raise ValueError(f"spool version {item['v']}, expected {SPOOL_VERSION}")
    if item["kind"] == "feedback":
        return PendingFeedback(item["prediction_id"], item["label"], datetime.fromisoformat(item["at"]))
    if item["kind"] == "shadow":
        fields = {k: v for k, v in item.items() if k not in ("v", "kind")}
        return PendingShadow(**{**fields, "created_at": datetime.fromisoformat(item["created_at"]),
                                "probabilities": _unarray(item["probabilities"]),
                                "embeddings": _unarray(item["embeddings"])})
    return PendingPredictions(
        ids=item["ids"],
        created_at=datetime.fromisoformat(item["created_at"]),
        model_name=item["model_name"],
        model_version=item["model_version"],
        classes=item["classes"],
        reduction=item["reduction"],
        images=[_unarray(image) for image in item["images"]],
        probabilities=_unarray(item["probabilities"]),
        embeddings=_unarray(item["embeddings"]),
        source=item["source"],
        stream_id=item.get("stream_id"),  # absent in entries spilled before streams were logged
        frame_ts=item.get("frame_ts"),
    )


def _array(array: Any) -> dict[str, Any]:
    """An array as JSON, bytes exact (an image replayed is the image answered, pixel for pixel)."""
    value = np.ascontiguousarray(array)
    return {"dtype": value.dtype.str, "shape": list(value.shape), "data": base64.b64encode(value.tobytes()).decode()}


def _unarray(item: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(item["data"])
    return np.frombuffer(data, dtype=np.dtype(item["dtype"])).reshape(item["shape"]).copy()
