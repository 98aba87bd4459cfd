"""Labeled data to score a model on: production predictions that got a ``/feedback`` label, or a labeled folder.

``labeled_predictions`` reads the prediction log (the logged probabilities are scored as they were served);
``load_labeled`` reads images with their labels and metadata from a prepared data set (its test split), a
folder with a ``manifest.csv`` (such as a bundle's ``test_set``), a ``path,label[,meta…]`` CSV or a
class-per-folder directory. Folders and CSVs pass the same checks as training data (``data.ingest``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.data.images import load_image
from visionloop.data.ingest import ingest
from visionloop.data.manifest import metadata_columns, read_manifest
from visionloop.models.bundle import ServableModel
from visionloop.store.predlog import PredictionLog


def labeled_predictions(
    settings: Settings, model: ServableModel, *, last_n: int | None = None, all_versions: bool = False
) -> pd.DataFrame:
    """The latest ``last_n`` predictions of the model (its version only, unless ``all_versions``) with a label."""
    prediction_log = PredictionLog(settings.db_url)
    try:
        frame = prediction_log.labeled()
    finally:
        prediction_log.dispose()
    keep = frame["model_name"] == model.name
    if not all_versions:
        keep &= frame["model_version"].astype(str) == str(model.version)
    frame = frame[keep]
    return frame.tail(last_n) if last_n is not None else frame


@dataclass
class LabeledData:
    """Images with their labels, and per image the metadata columns to slice by."""

    images: list[np.ndarray]
    labels: list[str]
    metadata: pd.DataFrame  # one row per image
    source: str  # where they came from, for reports


def load_labeled(settings: Settings, data: Path | None = None, *, channels: int) -> LabeledData:
    """Labeled images from ``data`` (default: the project's prepared data, ``data.prepared_dir``).

    A folder with a ``manifest.csv`` is read as is (only its ``test`` split when it has splits); a CSV or a
    class-per-folder directory is checked like training data and the refused files are left out.
    Metadata: the manifest's non-structural columns (``data.manifest.metadata_columns``).
    """
    params = settings.params.data
    path = settings.path(data if data is not None else params.prepared_dir)
    if path.is_dir() and (path / "manifest.csv").exists():
        manifest = read_manifest(path)
        source = str(path)
        if "split" in manifest.columns:
            manifest = manifest[manifest["split"] == "test"]
            source = f"{path} (test split)"
        images = [load_image(p) for p in manifest["abs_path"]]
        metadata = manifest[metadata_columns(manifest.columns)]
        return LabeledData(images, manifest["label"].tolist(), metadata.reset_index(drop=True), source)
    if not path.exists():
        raise FileNotFoundError(f"no labeled data at {path}")
    images: list[np.ndarray] = []
    result = ingest(
        path,
        channels=channels,
        min_side=params.min_side,
        max_pixels=params.max_pixels,
        on_record=lambda _record, pixels: images.append(pixels),
    )
    metadata = pd.DataFrame([r.meta for r in result.records], columns=result.meta_columns)
    return LabeledData(images, [r.label for r in result.records], metadata, str(path))
