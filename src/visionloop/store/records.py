"""Prediction records: built from answered predictions, turned into table rows and back, and flattened.

``build_records`` computes each prediction's drift features with the same functions and column names
as ``monitoring.features.feature_frame`` (the reference profile); ``flatten_rows`` turns stored rows
into that same flat frame (``IMAGE_STAT_COLUMNS``, ``emb_i``, ``pred_label``, ``confidence``,
``prob_<class>``), so a drift check compares like with like. Input images are kept as PNG files named
by prediction id (``image_file``, ``save_png``) for labeling and retraining.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from visionloop.contracts import PredictionRecord
from visionloop.monitoring.features import (
    EMBEDDING_PREFIX,
    IMAGE_STAT_COLUMNS,
    LABEL_COLUMN,
    PROBABILITY_PREFIX,
    embedding_columns,
    image_statistics_many,
    reduce_embeddings,
)
from visionloop.store.schema import as_utc

# The table's own columns in a flattened frame, before the features and probabilities.
BASE_COLUMNS = [
    "id",
    "created_at",
    "model_name",
    "model_version",
    "label",
    "confidence",
    "image_path",
    "source",
    "feedback_label",
    "feedback_at",
    "stream_id",
    "frame_ts",
]


# --- records ↔ rows ---------------------------------------------------------------------------------


def record_to_row(record: PredictionRecord) -> dict[str, Any]:
    """A record as a ``predictions`` row: probabilities and features as JSON, times in UTC."""
    return {
        "id": record.id,
        "created_at": as_utc(record.created_at),
        "model_name": record.model_name,
        "model_version": str(record.model_version),
        "label": record.label,
        "confidence": float(record.confidence),
        "probabilities": json.dumps({k: float(v) for k, v in record.probabilities.items()}),
        "features": json.dumps({k: float(v) for k, v in record.features.items()}),
        "image_path": record.image_path,
        "source": record.source,
        "feedback_label": record.feedback_label,
        "feedback_at": as_utc(record.feedback_at) if record.feedback_at else None,
        "stream_id": record.stream_id,
        "frame_ts": record.frame_ts,
    }


def row_to_record(row: Any) -> PredictionRecord:
    """A ``predictions`` row (any mapping) back as a record."""
    return PredictionRecord(
        id=row["id"],
        created_at=row["created_at"],
        model_name=row["model_name"],
        model_version=row["model_version"],
        label=row["label"],
        confidence=row["confidence"],
        probabilities=json.loads(row["probabilities"]),
        features=json.loads(row["features"]),
        image_path=row["image_path"],
        source=row["source"],
        feedback_label=row["feedback_label"],
        feedback_at=row["feedback_at"],
        stream_id=row["stream_id"],
        frame_ts=row["frame_ts"],
    )


def flatten_rows(rows: list[Any]) -> pd.DataFrame:
    """Table rows → one flat frame: base columns, features, ``pred_label``, ``prob_<class>``."""
    if not rows:
        return pd.DataFrame(columns=[*BASE_COLUMNS, *IMAGE_STAT_COLUMNS, LABEL_COLUMN])
    flat = []
    for row in rows:
        item = {name: row[name] for name in BASE_COLUMNS}
        item.update(json.loads(row["features"]))
        item[LABEL_COLUMN] = row["label"]
        item.update({f"{PROBABILITY_PREFIX}{c}": p for c, p in json.loads(row["probabilities"]).items()})
        flat.append(item)
    frame = pd.DataFrame(flat)
    embedding = sorted((c for c in frame.columns if c.startswith(EMBEDDING_PREFIX)), key=_suffix_number)
    known = {*BASE_COLUMNS, *IMAGE_STAT_COLUMNS, *embedding, LABEL_COLUMN}
    other = [c for c in frame.columns if c not in known and not c.startswith(PROBABILITY_PREFIX)]
    probabilities = [c for c in frame.columns if c.startswith(PROBABILITY_PREFIX)]
    stats = [c for c in IMAGE_STAT_COLUMNS if c in frame.columns]
    frame = frame[[*BASE_COLUMNS, *stats, *embedding, *other, LABEL_COLUMN, *probabilities]]
    for column in ("created_at", "feedback_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _suffix_number(column: str) -> int:
    suffix = column[len(EMBEDDING_PREFIX) :]
    return int(suffix) if suffix.isdigit() else 1 << 30


# --- input images -----------------------------------------------------------------------------------


def image_file(image_dir: Path, prediction_id: str, created_at: datetime) -> Path:
    """Where the input of a prediction is kept: ``<image_dir>/<YYYY-MM-DD>/<id>.png`` (UTC day)."""
    return image_dir / as_utc(created_at).strftime("%Y-%m-%d") / f"{prediction_id}.png"


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a canonical uint8 image (H×W or H×W×C) as PNG, atomically (a partial file never has the name).

    Encoded in memory and written with plain file calls: this runs once per logged prediction.
    """
    array = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    encoded = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(encoded, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = f"{path}.part"
    with open(partial, "wb") as file:
        file.write(encoded.getbuffer())
    os.replace(partial, path)


# --- building records from answered predictions -----------------------------------------------------


@dataclass
class PendingPredictions:
    """Answered predictions waiting to be logged: everything needed to build their records later."""

    ids: list[str]
    created_at: datetime
    model_name: str
    model_version: str
    classes: list[str]
    reduction: dict[str, Any] | None
    images: list[np.ndarray]
    probabilities: np.ndarray  # N×C
    embeddings: np.ndarray  # N×D
    source: str = "rest"
    stream_id: str | None = None  # source "stream": the stream the frames came from
    frame_ts: list[float] | None = None  # and each frame's time in it (seconds), one per id


@dataclass
class PendingFeedback:
    """A true label for a prediction that was answered but not yet logged: written right after it."""

    prediction_id: str
    label: str
    at: datetime


@dataclass
class PendingShadow:
    """A challenger's answers for images the champion answered (shadow scoring), waiting to be logged.

    ``ids`` are the champion's prediction ids; the writer reduces the embeddings (``store.shadowlog``).
    """

    ids: list[str]
    created_at: datetime
    model_name: str
    champion_version: str
    champion_labels: list[str]
    champion_confidences: list[float]
    champion_ms: list[float]  # per image: forward time per image of the champion's batch it was in
    challenger_version: str
    challenger_classes: list[str]
    reduction: dict[str, Any] | None  # the challenger's
    probabilities: np.ndarray  # N×C, the challenger's
    embeddings: np.ndarray  # N×D, the challenger's
    challenger_ms: float  # forward time per image of the challenger's batch
    source: str = "rest"


LogEntry = PendingPredictions | PendingFeedback | PendingShadow  # what the serving writer queues, acknowledges, spills


def prediction_features(
    images: list[np.ndarray], embeddings: np.ndarray, reduction: dict[str, Any] | None
) -> list[dict[str, float]]:
    """Per image: ``features.image_statistics`` plus the embedding reduced by the version's PCA (``emb_i``).

    The same functions and column names as ``features.feature_frame`` (the reference profile), without
    building a DataFrame per log entry.
    """
    rows = image_statistics_many(images)
    if reduction is not None and rows:
        reduced = reduce_embeddings(np.asarray(embeddings).reshape(len(images), -1), reduction)
        names = embedding_columns(reduction)
        for row, values in zip(rows, reduced.reshape(len(images), len(names)), strict=True):
            row.update(zip(names, values.tolist(), strict=True))
    return rows


def build_records(pending: PendingPredictions, image_paths: list[str | None]) -> list[PredictionRecord]:
    """One record per answered prediction, with its drift features (``prediction_features``)."""
    features = prediction_features(pending.images, pending.embeddings, pending.reduction)
    probabilities = np.asarray(pending.probabilities, dtype=np.float64)
    best = probabilities.argmax(axis=1) if len(probabilities) else []
    return [
        PredictionRecord(
            id=prediction_id,
            created_at=pending.created_at,
            model_name=pending.model_name,
            model_version=str(pending.model_version),
            label=pending.classes[best[i]],
            confidence=float(probabilities[i, best[i]]),
            probabilities=dict(zip(pending.classes, probabilities[i].tolist(), strict=True)),
            features=features[i],
            image_path=image_paths[i],
            source=pending.source,
            stream_id=pending.stream_id,
            frame_ts=pending.frame_ts[i] if pending.frame_ts is not None else None,
        )
        for i, prediction_id in enumerate(pending.ids)
    ]
