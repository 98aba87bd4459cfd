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
# Pixels computed on at once. Each pixel costs ~45 bytes of float and int64 temporaries, so this bounds the
# statistics' memory to ~100 MB however many images there are and however large each is (issue 13, item 1).
_STATS_PIXELS = 1 << 21


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


def image_statistics_many(images: list[np.ndarray], max_pixels: int = _STATS_PIXELS) -> list[dict[str, float]]:
    """``image_statistics`` of each image, computed on stacks of same-shape images (one numpy call per
    statistic and stack instead of per image: ~5× faster on small images).

    A stack holds at most ``max_pixels`` pixels; an image larger than that is computed in row strips of
    that size, so memory is bounded by pixels, not by the number or size of the images.
    """
    canonical = [_canonical(image) for image in images]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(canonical):
        by_shape.setdefault(image.shape, []).append(index)
    rows: list[dict[str, float]] = [{} for _ in canonical]
    for shape, indices in by_shape.items():
        pixels = shape[0] * shape[1]
        if pixels > max_pixels:
            for index in indices:
                rows[index] = _strip_statistics(canonical[index], max(3, max_pixels // shape[1]))
            continue
        chunk = max_pixels // pixels
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            for index, row in zip(part, _stack_statistics(np.stack([canonical[i] for i in part])), strict=True):
                rows[index] = row
    return rows


def _stack_statistics(stack: np.ndarray) -> list[dict[str, float]]:
    """The statistics of N same-shape canonical images (N×H×W or N×H×W×3)."""
    n, height, width = stack.shape[:3]
    pixels = (1, 2)
    gray, gray_u8, rg, yb = _gray_and_opponents(stack)
    if rg is not None and yb is not None:
        colourfulness = np.sqrt(rg.var(axis=pixels) + yb.var(axis=pixels)) + 0.3 * np.sqrt(
            rg.mean(axis=pixels) ** 2 + yb.mean(axis=pixels) ** 2
        )
    else:
        colourfulness = np.zeros(n)
    sharpness = _laplacian(gray).var(axis=pixels) if height >= 3 and width >= 3 else np.zeros(n)
    offsets = 256 * np.arange(n)[:, None]  # one 256-bin histogram per image in a single bincount
    counts = np.bincount((gray_u8.reshape(n, -1) + offsets).ravel(), minlength=256 * n).reshape(n, 256)
    brightness, contrast = gray.mean(axis=pixels), gray.std(axis=pixels)
    return [
        _row(brightness[i], contrast[i], sharpness[i], colourfulness[i], counts[i], width, height) for i in range(n)
    ]


def _strip_statistics(image: np.ndarray, rows_per_strip: int) -> dict[str, float]:
    """The statistics of one large image from strips of ``rows_per_strip`` rows (plus a row of halo each side
    for the Laplacian), combining each strip's mean and variance exactly (Chan et al.)."""
    height, width = image.shape[:2]
    gray_m, lap_m, rg_m, yb_m = _Moments(), _Moments(), _Moments(), _Moments()
    counts = np.zeros(256, dtype=np.int64)
    for top in range(0, height, rows_per_strip):
        bottom = min(top + rows_per_strip, height)
        halo_top, halo_bottom = max(top - 1, 0), min(bottom + 1, height)
        gray, gray_u8, rg, yb = _gray_and_opponents(image[None, halo_top:halo_bottom])
        own = slice(top - halo_top, bottom - halo_top)  # this strip's rows without the halo
        gray_m.add(gray[0, own])
        counts += np.bincount(gray_u8[0, own].ravel(), minlength=256)
        if rg is not None and yb is not None:
            rg_m.add(rg[0, own])
            yb_m.add(yb[0, own])
        if width >= 3 and halo_bottom - halo_top >= 3:
            # Laplacian rows halo_top+1 .. halo_bottom-2: keep those that are this strip's own rows
            first, last = max(top, halo_top + 1), min(bottom, halo_bottom - 1)
            lap_m.add(_laplacian(gray)[0, first - halo_top - 1 : last - halo_top - 1])
    colourfulness = np.sqrt(rg_m.var + yb_m.var) + 0.3 * np.sqrt(rg_m.mean**2 + yb_m.mean**2) if rg_m.n else 0.0
    sharpness = lap_m.var if height >= 3 and width >= 3 else 0.0
    return _row(gray_m.mean, np.sqrt(gray_m.var), sharpness, colourfulness, counts, width, height)


class _Moments:
    """Count, mean and variance of values seen in parts (the parallel update of Chan, Golub & LeVeque)."""

    def __init__(self) -> None:
        self.n, self.mean, self._m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        m = values.size
        if m == 0:
            return
        mean = float(values.mean(dtype=np.float64))
        m2 = float(values.var(dtype=np.float64)) * m
        total = self.n + m
        delta = mean - self.mean
        self._m2 += m2 + delta * delta * self.n * m / total
        self.mean += delta * m / total
        self.n = total

    @property
    def var(self) -> float:
        return self._m2 / self.n if self.n else 0.0


def _gray_and_opponents(
    stack: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gray on [0, 1] (float32), gray as uint8, and the opponent channels rg, yb (None for gray images)."""
    if stack.ndim == 4:
        rgb = stack.astype(np.float32) * np.float32(1 / 255)
        gray = rgb @ _LUMA
        rg = rgb[..., 0] - rgb[..., 1]
        yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
        return gray, np.rint(gray * 255).astype(np.uint8), rg, yb
    return stack.astype(np.float32) * np.float32(1 / 255), stack, None, None


def _laplacian(gray: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of N×H×W gray images on their interior pixels: N×(H-2)×(W-2)."""
    return gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:] - 4 * gray[:, 1:-1, 1:-1]


def _row(
    brightness: float,
    contrast: float,
    sharpness: float,
    colourfulness: float,
    counts: np.ndarray,
    width: int,
    height: int,
) -> dict[str, float]:
    p = counts / (height * width)
    entropy = -(p * np.log2(np.where(counts > 0, p, 1.0))).sum() + 0.0  # + 0.0 turns -0.0 into 0.0
    return {
        "brightness": float(brightness),
        "contrast": float(contrast),
        "sharpness": float(sharpness),
        "colourfulness": float(colourfulness),
        "entropy": float(entropy),
        "width": float(width),
        "height": float(height),
        "aspect": width / height,
    }


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
