"""Production traffic for a trained project: clean images its champion never saw, written to its log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from visionloop.config import Settings
from visionloop.data.images import load_image
from visionloop.data.manifest import read_manifest
from visionloop.models.bundle import ServableModel
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import PendingPredictions, build_records, image_file, save_png
from visionloop.training.datamodule import stratified_subset


def unseen_images(settings: Settings) -> tuple[list[np.ndarray], list[str]]:
    """Clean digits the champion neither trained on nor holds in its reference profile.

    The reference profile is the val and test splits; training used ``train.limit_train_fraction``
    of the train split (``helpers.project.TRAINED_PARAMS``): the rest of the train split is unseen.
    """
    manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
    train = manifest[manifest["split"] == "train"]
    trained = stratified_subset(train, settings.params.train.limit_train_fraction, settings.seed)
    unseen = train.drop(index=trained.index).sample(frac=1.0, random_state=0)
    assert len(unseen) > 0, "the project trained on its whole train split: no unseen images"
    return [load_image(p) for p in unseen["abs_path"]], unseen["label"].tolist()


def log_traffic(
    settings: Settings,
    model: ServableModel,
    images: list[np.ndarray],
    labels: list[str] | None = None,
    at: datetime | None = None,
) -> list[str]:
    """Predict like the server and write the rows (features, stored PNGs, feedback) to the prediction log."""
    predictions = model.predict(images)
    at = at or datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in images]
    pending = PendingPredictions(ids, at, model.name, model.version, model.classes, model.reduction, images,
                                 predictions.probabilities, predictions.embeddings)
    image_dir = Path(settings.db_url.removeprefix("sqlite:///")).parent / "images"
    paths = []
    for prediction_id, image in zip(ids, images, strict=True):
        path = image_file(image_dir, prediction_id, at)
        save_png(image, path)
        paths.append(str(path))
    plog = PredictionLog(settings.db_url)
    try:
        plog.write(build_records(pending, paths))
        for prediction_id, label in zip(ids, labels or [], strict=False):
            plog.add_feedback(prediction_id, label)
    finally:
        plog.dispose()
    return ids
