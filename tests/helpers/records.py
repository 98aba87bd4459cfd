"""Prediction-log rows as REST and batch inference write them (``visionloop.contracts.PredictionRecord``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from visionloop.contracts import PredictionRecord

CLASSES = ["0", "1", "2"]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(
    confidence: float = 0.9,
    label: str = "2",
    at: datetime | None = None,
    features: dict[str, float] | None = None,
    version: str = "2",
    image_path: str | None = None,
) -> PredictionRecord:
    """A row of a three-class model (``CLASSES``) at ``T0`` unless ``at``; the rest of the mass split evenly."""
    rest = (1 - confidence) / (len(CLASSES) - 1)
    return PredictionRecord(
        id=str(uuid.uuid4()),
        created_at=at or T0,
        model_name="digits",
        model_version=version,
        label=label,
        confidence=confidence,
        probabilities={c: (confidence if c == label else rest) for c in CLASSES},
        features=features or {"brightness": 0.3, "contrast": 0.2},
        image_path=image_path,
    )
