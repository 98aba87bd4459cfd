"""Drift between two image folders, or between a stored reference profile and a folder (``visionloop drift``).

The images pass the same check as uploads (``data.images.canonicalize_image_bytes``); refused files are
listed, not tested. The features are the monitor's (``visionloop.monitoring.features``): image statistics,
and with a model its reduced embedding and outputs. Nothing here reads ``params.yaml``: the caller passes
the image limits and the drift thresholds, so the check runs the same from the command line or a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from visionloop.contracts import DriftVerdict
from visionloop.data.images import InvalidImage, canonicalize_image_bytes
from visionloop.monitoring.drift import DriftThresholds, run_drift_tests
from visionloop.monitoring.features import feature_frame, fit_reduction, image_stat_frame, predict_in_chunks

if TYPE_CHECKING:  # the caller loads the model (and so torch); a statistics-only check never imports it
    from visionloop.models.bundle import ServableModel

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class ImageLimits:
    """How a folder's images are canonicalized and which are refused (``data.channels``, ``min_side``, ...)."""

    channels: int
    min_side: int
    max_pixels: int


def list_images(directory: Path | str) -> list[Path]:
    """Image files under ``directory`` (recursively, e.g. class-per-folder), in a stable order."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_folder(directory: Path | str, limits: ImageLimits) -> tuple[list[np.ndarray], list[tuple[Path, str]]]:
    """Canonical images of a folder, through the same check as uploads; also the files refused and why."""
    images, refused = [], []
    for path in list_images(directory):
        try:
            canonical = canonicalize_image_bytes(
                path.read_bytes(), channels=limits.channels, min_side=limits.min_side, max_pixels=limits.max_pixels
            )
        except InvalidImage as exc:
            refused.append((path, exc.reason))
            continue
        images.append(canonical.array)
    return images, refused


@dataclass
class FolderCheck:
    """The result of ``check_folders``: the verdict, the feature frames it was computed on, the files refused.

    The frames are what a report of the verdict needs (``evidently_report.drift_report``), built only
    when one is asked for.
    """

    verdict: DriftVerdict
    reference: pd.DataFrame
    current: pd.DataFrame
    refused: list[tuple[Path, str]]


def check_folders(
    reference: Path | str,
    current: Path | str,
    *,
    limits: ImageLimits,
    thresholds: DriftThresholds,
    n_components: int,
    model: ServableModel | None = None,
) -> FolderCheck:
    """Drift between two image folders, or between a stored reference profile (``.parquet``) and a folder.

    With ``model``, the features include its reduced embedding and outputs; without, image statistics
    only. ``n_components``: the embedding reduction fitted on the reference images when the model has none.
    """
    current_images, refused = load_folder(current, limits)
    if not current_images:
        raise ValueError(f"no readable image in {current} ({len(refused)} refused): drift needs images on both sides")
    reference_path = Path(reference)
    if reference_path.is_file() and reference_path.suffix == ".parquet":
        reference_frame = pd.read_parquet(reference_path)
        current_frame = _current_features(current_images, model)
    else:
        reference_images, refused_ref = load_folder(reference_path, limits)
        if not reference_images:
            raise ValueError(f"no readable image in {reference_path} ({len(refused_ref)} refused): "
                             "drift needs images on both sides")
        refused = refused_ref + refused
        reference_frame, current_frame = folder_features(reference_images, current_images, model, n_components)
    verdict = run_drift_tests(
        reference_frame,
        current_frame,
        thresholds,
        model_name=model.name if model else None,
        model_version=str(model.version) if model else None,
    )
    return FolderCheck(verdict, reference_frame, current_frame, refused)


def _current_features(images: list[np.ndarray], model: ServableModel | None) -> pd.DataFrame:
    if model is None:
        return image_stat_frame(images)
    return feature_frame(images, predict_in_chunks(model, images), model.classes, model.reduction)


def folder_features(
    reference_images: list[np.ndarray],
    current_images: list[np.ndarray],
    model: ServableModel | None,
    n_components: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature frames of two image sets: image statistics only, or with the model's embedding and outputs.

    With a model, the embedding reduction is the model's stored one (as in production monitoring),
    else one fitted on the reference images.
    """
    if model is None:
        return image_stat_frame(reference_images), image_stat_frame(current_images)
    ref_pred = predict_in_chunks(model, reference_images)
    reduction = model.reduction
    if reduction is None:
        k = min(n_components, len(reference_images), ref_pred.embeddings.shape[1])
        reduction = fit_reduction(ref_pred.embeddings, k)
    reference = feature_frame(reference_images, ref_pred, model.classes, reduction)
    current = feature_frame(current_images, predict_in_chunks(model, current_images), model.classes, reduction)
    return reference, current
