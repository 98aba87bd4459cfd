"""Per-image features for drift monitoring: the same function at training time and at serving time.

The reference profile stored with a model version (seam 3) and every row of the prediction log
(seam 4) are built by the functions here, so that a drift check compares like with like:

* image statistics (``IMAGE_STAT_COLUMNS``) — what the camera / pipeline delivers;
* the model's embedding reduced by a PCA fitted on the reference (``emb_0..emb_{k-1}``);
* the model's outputs (``pred_label``, ``confidence``, ``prob_<class>``) — black-box shift detection.

Intensities are measured on a [0, 1] scale (uint8 / 255), so brightness, contrast, sharpness and
colourfulness do not depend on the bit depth; entropy is in bits of the 256-bin gray histogram.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from visionloop.models.bundle import Predictions, ServableModel

IMAGE_STAT_COLUMNS = [
    "brightness",
    "contrast",
    "sharpness",
    "colourfulness",
    "entropy",
    "width",
    "height",
    "aspect",
]
LABEL_COLUMN = "pred_label"
CONFIDENCE_COLUMN = "confidence"
CATEGORICAL_COLUMNS = [LABEL_COLUMN]
EMBEDDING_PREFIX = "emb_"
PROBABILITY_PREFIX = "prob_"

# ITU-R BT.601 luma weights: the gray image that brightness, contrast, sharpness and entropy use.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PREDICT_CHUNK = 512
_STATS_CHUNK = 256  # images stacked at once: bounded memory for large images


def _canonical(image: np.ndarray) -> np.ndarray:
    """Check the canonical form (uint8, H×W or H×W×3; H×W×1 is squeezed) so stats never mix scales."""
    if image.dtype != np.uint8:
        raise ValueError(f"image statistics need a canonical uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return image
    raise ValueError(f"image must be H×W or H×W×3, got shape {image.shape}")


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Brightness, RMS contrast, sharpness, colourfulness, entropy, width, height and aspect of one image.

    * brightness — mean gray level in [0, 1];
    * contrast — RMS contrast, the standard deviation of the gray levels in [0, 1];
    * sharpness — variance of the 4-neighbour Laplacian of the gray image (0 for images < 3 px a side);
    * colourfulness — Hasler & Süsstrunk (2003) on [0, 1] channels (their 0–255 value / 255); 0 for gray;
    * entropy — Shannon entropy (bits) of the 256-bin histogram of the uint8 gray image;
    * width, height in pixels; aspect = width / height.
    """
    return image_statistics_many([image])[0]


def image_statistics_many(images: list[np.ndarray], chunk: int = _STATS_CHUNK) -> list[dict[str, float]]:
    """``image_statistics`` of each image, computed on stacks of same-shape images (one numpy call per
    statistic and stack instead of per image: ~5× faster on small images)."""
    canonical = [_canonical(image) for image in images]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(canonical):
        by_shape.setdefault(image.shape, []).append(index)
    rows: list[dict[str, float]] = [{} for _ in canonical]
    for indices in by_shape.values():
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            for index, row in zip(part, _stack_statistics(np.stack([canonical[i] for i in part])), strict=True):
                rows[index] = row
    return rows


def _stack_statistics(stack: np.ndarray) -> list[dict[str, float]]:
    """The statistics of N same-shape canonical images (N×H×W or N×H×W×3)."""
    n, height, width = stack.shape[:3]
    pixels = (1, 2)
    if stack.ndim == 4:
        rgb = stack.astype(np.float32) * np.float32(1 / 255)
        gray = rgb @ _LUMA
        rg = rgb[..., 0] - rgb[..., 1]
        yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
        colourfulness = np.sqrt(rg.var(axis=pixels) + yb.var(axis=pixels)) + 0.3 * np.sqrt(
            rg.mean(axis=pixels) ** 2 + yb.mean(axis=pixels) ** 2
        )
        gray_u8 = np.rint(gray * 255).astype(np.uint8)
    else:
        gray = stack.astype(np.float32) * np.float32(1 / 255)
        colourfulness = np.zeros(n)
        gray_u8 = stack
    if height >= 3 and width >= 3:
        laplacian = (
            gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:] - 4 * gray[:, 1:-1, 1:-1]
        )
        sharpness = laplacian.var(axis=pixels)
    else:
        sharpness = np.zeros(n)
    offsets = 256 * np.arange(n)[:, None]  # one 256-bin histogram per image in a single bincount
    counts = np.bincount((gray_u8.reshape(n, -1) + offsets).ravel(), minlength=256 * n).reshape(n, 256)
    p = counts / (height * width)
    entropy = -(p * np.log2(np.where(counts > 0, p, 1.0))).sum(axis=1) + 0.0  # + 0.0 turns -0.0 into 0.0
    brightness, contrast = gray.mean(axis=pixels), gray.std(axis=pixels)
    return [
        {
            "brightness": float(brightness[i]),
            "contrast": float(contrast[i]),
            "sharpness": float(sharpness[i]),
            "colourfulness": float(colourfulness[i]),
            "entropy": float(entropy[i]),
            "width": float(width),
            "height": float(height),
            "aspect": width / height,
        }
        for i in range(n)
    ]


# --- embedding reduction -------------------------------------------------------------------------


def fit_reduction(embeddings: np.ndarray, n_components: int) -> dict[str, Any]:
    """Fit a PCA (numpy SVD) on the reference embeddings; a JSON-serialisable dict stored with the model.

    Component signs are fixed (largest-magnitude loading positive) so that refitting on the same data
    gives the same columns.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N×D, got shape {x.shape}")
    n, d = x.shape
    if not 1 <= n_components <= min(n, d):
        raise ValueError(f"n_components must be in 1..{min(n, d)} for {n}×{d} embeddings, got {n_components}")
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:n_components]
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    variance = singular**2 / max(n - 1, 1)
    total = variance.sum()
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    return {
        "method": "pca",
        "n_components": n_components,
        "input_dim": d,
        "n_fit": n,
        "mean": mean.tolist(),
        "components": components.tolist(),
        "explained_variance": variance[:n_components].tolist(),
        "explained_variance_ratio": ratio[:n_components].tolist(),
    }


def reduce_embeddings(embeddings: np.ndarray, reduction: dict[str, Any]) -> np.ndarray:
    """Project N×D embeddings (or one D vector) onto the fitted components: N×k (or k)."""
    x = np.asarray(embeddings, dtype=np.float64)
    mean = np.asarray(reduction["mean"], dtype=np.float64)
    components = np.asarray(reduction["components"], dtype=np.float64)
    if x.shape[-1] != mean.shape[0]:
        raise ValueError(f"embedding dimension {x.shape[-1]} does not match the reduction's {mean.shape[0]}")
    return (x - mean) @ components.T


def embedding_columns(reduction: dict[str, Any] | None) -> list[str]:
    return [] if reduction is None else [f"{EMBEDDING_PREFIX}{i}" for i in range(int(reduction["n_components"]))]


def probability_columns(classes: list[str]) -> list[str]:
    return [f"{PROBABILITY_PREFIX}{c}" for c in classes]


def feature_columns(classes: list[str], reduction: dict[str, Any] | None) -> list[str]:
    """The column order of ``feature_frame``: the schema shared by the reference profile and the log."""
    return [
        *IMAGE_STAT_COLUMNS,
        *embedding_columns(reduction),
        LABEL_COLUMN,
        CONFIDENCE_COLUMN,
        *probability_columns(classes),
    ]


def feature_frame(
    images: list[np.ndarray],
    predictions: Predictions,
    classes: list[str],
    reduction: dict[str, Any] | None,
) -> pd.DataFrame:
    """One row per image: image statistics, reduced embedding (if ``reduction``) and the model outputs."""
    probabilities = np.asarray(predictions.probabilities)
    if probabilities.shape != (len(images), len(classes)):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match {len(images)} images × {len(classes)} classes"
        )
    frame = image_stat_frame(images)
    columns: dict[str, Any] = {}
    if reduction is not None:
        reduced = reduce_embeddings(np.asarray(predictions.embeddings).reshape(len(images), -1), reduction)
        reduced = reduced.reshape(len(images), int(reduction["n_components"]))
        columns.update(zip(embedding_columns(reduction), reduced.T, strict=True))
    labels = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)] if len(images) else []
    columns[LABEL_COLUMN] = pd.Series(labels, dtype=object)
    columns[CONFIDENCE_COLUMN] = probabilities.max(axis=1, initial=0.0).astype(float)
    columns.update(zip(probability_columns(classes), probabilities.astype(float).T, strict=True))
    extra = pd.DataFrame(columns, index=frame.index)
    return pd.concat([frame, extra], axis=1)[feature_columns(classes, reduction)]


def image_stat_frame(images: list[np.ndarray]) -> pd.DataFrame:
    """The image statistics of many images, one row each (``IMAGE_STAT_COLUMNS``)."""
    return pd.DataFrame(image_statistics_many(images), columns=IMAGE_STAT_COLUMNS, dtype=float)


def predict_in_chunks(model: ServableModel, images: list[np.ndarray], chunk: int = _PREDICT_CHUNK) -> Predictions:
    """``model.predict`` over many images without one huge batch in memory.

    (``Predictions`` is only named for typing: this module must not load torch, which the prediction log's
    writer would then pay for.)
    """
    if not images:
        return model.predict([])
    parts = [model.predict(images[i : i + chunk]) for i in range(0, len(images), chunk)]
    return replace(
        parts[0],
        probabilities=np.concatenate([p.probabilities for p in parts]),
        embeddings=np.concatenate([p.embeddings for p in parts]),
    )


def build_reference_profile(
    model: ServableModel, images: list[np.ndarray], n_components: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict the reference images, fit the embedding reduction on them, and return (profile, reduction).

    The reduction is not attached to ``model``; store it beside the profile (``BUNDLE_FILES``).
    """
    if not images:
        raise ValueError("a reference profile needs at least one image")
    predictions = predict_in_chunks(model, images)
    reduction = fit_reduction(predictions.embeddings, n_components)
    return feature_frame(images, predictions, model.classes, reduction), reduction
