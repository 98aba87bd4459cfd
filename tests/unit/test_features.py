"""Per-image features: image statistics on known images, the PCA reduction, the feature frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.models import tiny_model

from visionloop.models.bundle import Predictions
from visionloop.monitoring.features import (
    IMAGE_STAT_COLUMNS,
    build_reference_profile,
    feature_columns,
    feature_frame,
    fit_reduction,
    image_statistics,
    image_statistics_many,
    reduce_embeddings,
)

CLASSES = ["zero", "one", "two"]


def checkerboard(size: int = 32) -> np.ndarray:
    return (np.indices((size, size)).sum(axis=0) % 2 * 255).astype(np.uint8)


def test_black_and_white_images() -> None:
    black = image_statistics(np.zeros((32, 32), np.uint8))
    white = image_statistics(np.full((32, 32), 255, np.uint8))
    assert list(black) == IMAGE_STAT_COLUMNS
    assert black == {
        "brightness": 0.0,
        "contrast": 0.0,
        "sharpness": 0.0,
        "colourfulness": 0.0,
        "entropy": 0.0,
        "width": 32.0,
        "height": 32.0,
        "aspect": 1.0,
    }
    assert white["brightness"] == pytest.approx(1.0)
    assert white["contrast"] == pytest.approx(0.0, abs=1e-7)
    assert white["entropy"] == 0.0 and white["sharpness"] == pytest.approx(0.0, abs=1e-9)


def test_checkerboard_is_sharp_with_one_bit_of_entropy() -> None:
    stats = image_statistics(checkerboard())
    assert stats["brightness"] == pytest.approx(0.5)
    assert stats["contrast"] == pytest.approx(0.5)  # RMS contrast of a 0/1 image
    assert stats["entropy"] == pytest.approx(1.0)
    # Interior Laplacian of a one-pixel checkerboard is ±4 everywhere: variance 16.
    assert stats["sharpness"] == pytest.approx(16.0)
    # Same tones in two halves (no edges but one): same entropy, much less sharp.
    halves = np.zeros((32, 32), np.uint8)
    halves[:, 16:] = 255
    soft = image_statistics(halves)
    assert soft["entropy"] == pytest.approx(1.0)
    assert soft["sharpness"] < stats["sharpness"] / 10


def test_size_and_aspect() -> None:
    stats = image_statistics(np.zeros((20, 40), np.uint8))
    assert (stats["width"], stats["height"], stats["aspect"]) == (40.0, 20.0, 2.0)


def test_colour_images() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    as_rgb = image_statistics(np.repeat(gray[:, :, None], 3, axis=2))
    as_gray = image_statistics(gray)
    assert as_rgb["colourfulness"] == pytest.approx(0.0, abs=1e-6)
    for key in IMAGE_STAT_COLUMNS:
        assert as_rgb[key] == pytest.approx(as_gray[key], abs=1e-5), key
    # Half pure red, half pure green: very colourful (Hasler–Süsstrunk on [0, 1] channels).
    red_green = np.zeros((16, 16, 3), np.uint8)
    red_green[:, :8, 0] = 255
    red_green[:, 8:, 1] = 255
    colourful = image_statistics(red_green)["colourfulness"]
    assert colourful == pytest.approx(np.sqrt(1.0 + 0.0) + 0.3 * np.sqrt(0.0 + 0.5**2))
    # H×W×1 is the same as H×W.
    assert image_statistics(gray[:, :, None]) == as_gray


def test_rejects_non_canonical_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        image_statistics(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="H×W"):
        image_statistics(np.zeros((8, 8, 4), np.uint8))


def test_statistics_of_many_images_match_one_at_a_time() -> None:
    rng = np.random.default_rng(1)
    images = [
        checkerboard(),
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (32, 32), dtype=np.uint8),
        np.zeros((2, 5), np.uint8),  # too small for a Laplacian
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (32, 32), dtype=np.uint8)[:, :, None],
    ]
    many = image_statistics_many(images, max_pixels=2048)  # stacks of two 32×32 images, shapes interleaved
    assert len(many) == len(images)
    for image, row in zip(images, many, strict=True):
        alone = image_statistics(image)
        assert list(row) == IMAGE_STAT_COLUMNS
        for key in IMAGE_STAT_COLUMNS:
            assert row[key] == pytest.approx(alone[key], rel=1e-6, abs=1e-9), key
    assert many[0]["sharpness"] == pytest.approx(16.0) and many[3]["sharpness"] == 0.0
    assert image_statistics_many([]) == []


def test_pca_round_trip_and_json() -> None:
    rng = np.random.default_rng(2)
    latent = rng.normal(size=(200, 3)) * [5.0, 2.0, 1.0]
    mixing = np.linalg.qr(rng.normal(size=(16, 3)))[0].T  # 3 orthonormal rows in 16 dims
    embeddings = latent @ mixing + rng.normal(size=16)  # rank 3 plus an offset
    reduction = fit_reduction(embeddings, 3)
    stored = json.loads(json.dumps(reduction))
    reduced = reduce_embeddings(embeddings, stored)
    assert reduced.shape == (200, 3)
    components = np.asarray(stored["components"])
    np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(reduced @ components + np.asarray(stored["mean"]), embeddings, atol=1e-8)
    assert sum(stored["explained_variance_ratio"]) == pytest.approx(1.0)
    assert stored["explained_variance"] == sorted(stored["explained_variance"], reverse=True)
    # Deterministic: the same data in another order gives the same components (signs included).
    again = fit_reduction(embeddings[::-1], 3)
    np.testing.assert_allclose(again["components"], stored["components"], atol=1e-10)
    # One vector works like a batch of one.
    np.testing.assert_allclose(reduce_embeddings(embeddings[0], stored), reduced[0])


def test_reduction_errors() -> None:
    embeddings = np.random.default_rng(3).normal(size=(10, 4))
    with pytest.raises(ValueError, match="n_components"):
        fit_reduction(embeddings, 5)
    with pytest.raises(ValueError, match="dimension"):
        reduce_embeddings(np.zeros((2, 5)), fit_reduction(embeddings, 2))


def test_feature_frame_columns_and_values() -> None:
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(5)]
    probabilities = rng.dirichlet(np.ones(3), size=5)
    embeddings = rng.normal(size=(5, 8))
    reduction = fit_reduction(embeddings, 2)
    frame = feature_frame(images, Predictions(probabilities, embeddings), CLASSES, reduction)
    assert list(frame.columns) == feature_columns(CLASSES, reduction)
    assert list(frame.columns[8:]) == [
        "emb_0",
        "emb_1",
        "pred_label",
        "confidence",
        "prob_zero",
        "prob_one",
        "prob_two",
    ]
    assert list(frame["pred_label"]) == [CLASSES[i] for i in probabilities.argmax(axis=1)]
    np.testing.assert_allclose(frame["confidence"], probabilities.max(axis=1))
    np.testing.assert_allclose(frame[["prob_zero", "prob_one", "prob_two"]], probabilities)
    np.testing.assert_allclose(frame[["emb_0", "emb_1"]], reduce_embeddings(embeddings, reduction))
    assert frame.loc[3, "brightness"] == pytest.approx(image_statistics(images[3])["brightness"])
    without = feature_frame(images, Predictions(probabilities, embeddings), CLASSES, None)
    assert not [c for c in without.columns if c.startswith("emb_")]
    with pytest.raises(ValueError, match="do not match"):
        feature_frame(images[:4], Predictions(probabilities, embeddings), CLASSES, None)


def test_reference_profile_matches_serving_features() -> None:
    model = tiny_model(CLASSES)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(40)]
    profile, reduction = build_reference_profile(model, images, n_components=4)
    assert len(profile) == 40 and reduction["n_components"] == 4 and reduction["input_dim"] == 16
    assert list(profile.columns) == feature_columns(CLASSES, reduction)
    # Serving computes one image at a time with the stored reduction: the same numbers.
    served = feature_frame(images[7:8], model.predict(images[7:8]), CLASSES, json.loads(json.dumps(reduction)))
    row = profile.iloc[7]
    for column in profile.columns:
        if column == "pred_label":
            assert served.loc[0, column] == row[column]
        else:
            assert served.loc[0, column] == pytest.approx(row[column], rel=1e-4, abs=1e-5), column


def test_a_large_image_is_computed_in_strips_with_the_same_statistics() -> None:
    rng = np.random.default_rng(2)
    images = [
        rng.integers(0, 256, (61, 47, 3), dtype=np.uint8),
        rng.integers(0, 256, (61, 47), dtype=np.uint8),
        np.full((50, 40), 7, np.uint8),  # constant: no variance to lose to rounding
    ]
    for image in images:
        whole = image_statistics_many([image])[0]
        for max_pixels in (40, 200, 47 * 10 + 1):  # strips of 3 rows (the least), of 4, of 10
            strips = image_statistics_many([image], max_pixels=max_pixels)[0]
            for key in IMAGE_STAT_COLUMNS:
                assert strips[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), (key, max_pixels)


def test_statistics_memory_is_bounded_by_pixels_not_images() -> None:
    """Issue 13, item 1: one 3000×3000 RGB image used ~45 bytes per pixel of float and int64 temporaries."""
    import tracemalloc

    image = np.random.default_rng(3).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        image_statistics_many([image])
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB for a 9 MP image"
