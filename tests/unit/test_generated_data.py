"""The generated shapes and contours sets (deterministic, conditions as manifest columns) and init's choices."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from visionloop.data.contours import write_contours
from visionloop.data.shapes import write_shapes
from visionloop.project.choices import choose
from visionloop.project.survey import survey


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if
            p.is_file()}


@pytest.mark.parametrize("write", [write_shapes, write_contours])
def test_generated_sets_are_byte_for_byte_deterministic(write, tmp_path: Path) -> None:
    assert write(tmp_path / "a", 16, seed=3) == 16
    write(tmp_path / "b", 16, seed=3)
    write(tmp_path / "c", 16, seed=4)
    first = digest(tmp_path / "a")
    assert len(first) == 17  # 16 JPEGs and the manifest
    assert digest(tmp_path / "b") == first
    assert digest(tmp_path / "c") != first
    write(tmp_path / "d", 8, seed=3)  # a prefix of the same seed is the same images
    assert {k: v for k, v in first.items() if k != "manifest.csv" and int(Path(k).stem) < 8} == {
        k: v for k, v in digest(tmp_path / "d").items() if k != "manifest.csv"}


def test_shapes_are_rgb_jpegs_of_mixed_sizes_with_their_conditions(tmp_path: Path) -> None:
    write_shapes(tmp_path, 40, seed=0)
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str)
    assert list(manifest.columns) == ["path", "label", "background", "size", "quality"]
    assert set(manifest["label"]) == {"circle", "square", "triangle", "star"}
    assert set(manifest["background"]) == {"plain", "gradient", "noise", "stripes"}
    sizes = set()
    for path, label in zip(manifest["path"], manifest["label"], strict=True):
        assert path.startswith(f"{label}/")
        with Image.open(tmp_path / path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.width == image.height
            assert 48 <= image.width <= 128
            sizes.add(image.width)
    assert len(sizes) > 10


def test_contours_write_every_condition_and_only_open_ones_have_gaps(tmp_path: Path) -> None:
    write_contours(tmp_path, 60, seed=1)
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str)
    assert list(manifest.columns) == ["path", "label", "background", "stroke", "gap", "blur", "quality", "figure",
                                      "size"]
    assert set(manifest["label"]) == {"open", "closed"}
    assert (manifest.loc[manifest["label"] == "closed", "gap"] == "none").all()
    assert set(manifest.loc[manifest["label"] == "open", "gap"]) == {"small", "large"}
    for column, values in {"stroke": {"thin", "thick"}, "blur": {"none", "soft"}, "quality": {"high", "low"},
                           "figure": {"ellipse", "polygon", "blob"}}.items():
        assert set(manifest[column]) == values, column
    with Image.open(tmp_path / manifest["path"][0]) as image:
        assert image.mode == "RGB" and 48 <= image.width <= 96


def test_a_gap_is_a_missing_stretch_of_stroke(tmp_path: Path) -> None:
    """Same outline drawn closed and open: the open mask has strictly less ink (the gap is really there)."""
    from visionloop.data.contours import contour_mask, outline

    points = outline("ellipse", np.array([200.0, 200.0]), 120.0, np.random.default_rng(0))
    closed = np.asarray(contour_mask(points, 400, 12.0, 0.0), dtype=float).sum()
    opened = np.asarray(contour_mask(points, 400, 12.0, 60.0), dtype=float).sum()
    assert opened < closed * 0.97


def gray_folder(root: Path, labels: list[str], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for label in labels:
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(np.stack([pixels] * 3, axis=2)).save(root / label / f"{i}.jpg", quality=95)


def template(batch: int = 64, patience: int = 5) -> dict:
    return {"data": {"val_fraction": 0.15, "test_fraction": 0.15},
            "train": {"batch_size": batch, "early_stopping_patience": patience}}


def test_init_chooses_from_the_data_gray_wide_digits(tmp_path: Path) -> None:
    gray_folder(tmp_path, ["0", "1", "7"], (120, 60))  # RGB files whose pixels are gray, 2:1, digit classes
    overrides, choices = choose(survey(tmp_path), template(), "My Digits", "data/images")
    assert overrides["data"]["channels"] == 1
    assert overrides["data"]["image_size"] == 48  # median short side 60 → 48
    train = [next(iter(step)) for step in overrides["augment"]["train"]]
    assert train[:2] == ["LongestMaxSize", "PadIfNeeded"]  # not square: no stretching
    assert "HorizontalFlip" not in train  # a mirrored 7 is not a 7
    assert len(overrides["augment"]["train"][-1]["Normalize"]["mean"]) == 1
    assert overrides["registry"]["model_name"] == "my-digits-cnn"
    assert overrides["train"]["batch_size"] == 32 and overrides["train"]["epochs"] == 120
    assert all(c.why for c in choices)


def test_init_chooses_from_the_data_colour_shapes(tmp_path: Path) -> None:
    write_shapes(tmp_path, 24, seed=2)
    overrides, _ = choose(survey(tmp_path / "manifest.csv"), template(), "shapes", "data/images/manifest.csv")
    assert overrides["data"]["channels"] == 3
    assert overrides["data"]["image_size"] in (64, 96)
    train = [next(iter(step)) for step in overrides["augment"]["train"]]
    assert train[0] == "Resize" and "HorizontalFlip" in train
    assert overrides["model"]["pooling"] == "max"  # a small corner or tip is not averaged away by the background
    assert overrides["registry"]["gate"]["slices"]["metadata"] == ["background", "size", "quality"]
