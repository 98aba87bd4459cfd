"""The parameters ``visionloop init`` chooses from a survey of the user's images, each with its reason.

Everything not chosen here keeps the value of the template ``params.yaml``. The rules are deliberately
simple and written into the report, so a user can see which one fired and change its outcome in
``params.yaml``:

- channels: 1 when every readable image is gray (whatever its file mode), else 3;
- input size: the largest of ``SIZES`` not above the median short side, capped at ``MAX_SIZE`` (the
  cost of a step grows with the square of the side; on a CPU a larger input buys little for
  small data);
- resize: a plain resize when nearly all images are close to square, else longest-side resize and
  padding (no distortion);
- flips: horizontal flips unless a class name suggests handedness or writing (digits, letters,
  left/right, text...);
- normalisation: the data's own per-channel mean and standard deviation;
- global max pooling in the small CNN (``POOLING``): a user's object may cover a small, varying share of the
  photo, on any background; what tells classes apart (a corner, a tip) is a few pixels, which average
  pooling dilutes with the background and max pooling keeps (measured on shapes: README);
- epochs and batch size: enough optimizer steps (``TARGET_STEPS``) for a small data set to train,
  with early stopping ending the run when val loss stops improving.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionloop.project.survey import Survey

SIZES = (32, 48, 64, 96, 128, 160, 224)
MAX_SIZE = 128
SQUARE_TOLERANCE = 1.25  # aspect ratio within [1/t, t] counts as square
SQUARE_SHARE = 0.9  # ... for this share of the images, a plain resize is used
TARGET_STEPS = 500  # optimizer steps a from-scratch small CNN needs on a few hundred images (measured: README)
EPOCH_RANGE = (12, 120)
SMALL_DATA = 2000  # train images below which batches of 32 give more steps per epoch
# Early stopping on small data waits at least this many epochs, and a third of the run: a small CNN from scratch
# can sit at chance for its first ~100 steps (val loss flat), then learn (measured on shapes: README).
PATIENCE_SMALL = 10
POOLING = "max"  # model.pooling for any user's images; the digits of this repository keep avg (they fill the frame)
MAX_SLICE_VALUES = 12  # a manifest column with more distinct values is an identifier, not a slice
NO_FLIP = re.compile(r"(^\w$|^\d+$|left|right|digit|letter|text|word|char|arrow|sign|hand|number)", re.I)


@dataclass(frozen=True)
class Choice:
    """One parameter ``init`` set: the key in params.yaml, its value, and why."""

    key: str
    value: Any
    why: str
    applied: bool = True  # False: a note on how a value above was built, not a key of its own


def _note(key: str, value: Any, why: str) -> Choice:
    return Choice(key, value, why, applied=False)


def _set(overrides: dict[str, Any], key: str, value: Any) -> None:
    node = overrides
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def choose(found: Survey, template: dict[str, Any], name: str, source: str) -> tuple[dict[str, Any], list[Choice]]:
    """The params.yaml overrides for a project named ``name`` whose ``data.source`` is ``source``, with reasons."""
    if found.n_readable == 0:
        raise ValueError("no readable image in the source: nothing to train on")
    choices: list[Choice] = [Choice("data.source", source, "the images copied into the project, DVC-tracked")]
    gray = found.n_gray == found.n_readable
    channels = 1 if gray else 3
    why = (f"all {found.n_readable} readable images are gray" if gray else
           f"{found.n_readable - found.n_gray} of {found.n_readable} images have colour")
    choices.append(Choice("data.channels", channels, why + f" (file modes: {found.modes})"))
    median_short = float(np.median(found.short_sides))
    fitting = [s for s in SIZES if s <= median_short] or [SIZES[0]]
    size = min(fitting[-1], MAX_SIZE)
    capped = " (capped: larger inputs cost steps quadratically on a CPU)" if fitting[-1] > MAX_SIZE else ""
    choices.append(Choice("data.image_size", size, f"median short side {median_short:.0f} px "
                                                   f"(range {min(found.short_sides)}–{max(found.short_sides)})"
                                                   f" → largest of {SIZES} not above it{capped}"))
    choices.append(Choice("augment.train", augment_train(found, size, channels, choices), "see the lines above"))
    choices.append(Choice("augment.eval", [*resize_steps(found, size, []), normalize(found, channels)],
                          "the same resize and normalisation, nothing random"))
    choices.append(Choice("model.pooling", POOLING, "the small CNN's global pooling: whether a feature (a corner, a "
                                                    "tip) occurs anywhere, however small a share of the image it is; "
                                                    "average pooling dilutes it with the background"))
    choices.extend(schedule(found, template))
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "images"
    choices.append(Choice("registry.model_name", f"{slug}-cnn", "named after the project folder"))
    slices = [c for c in found.meta_columns if 1 < found.meta_values[c] <= MAX_SLICE_VALUES]
    if slices:
        choices.append(Choice("registry.gate.slices.metadata", slices,
                              f"manifest columns with 2–{MAX_SLICE_VALUES} values: the gate judges each slice"))
    overrides: dict[str, Any] = {}
    for choice in choices:
        if choice.applied:
            _set(overrides, choice.key, choice.value)
    return overrides, choices


def resize_steps(found: Survey, size: int, notes: list[Choice]) -> list[dict[str, Any]]:
    """Resize to ``size``×``size``: plainly when the images are about square, else without distortion."""
    ratios = found.aspect_ratios
    square = float(np.mean((ratios <= SQUARE_TOLERANCE) & (ratios >= 1 / SQUARE_TOLERANCE)))
    if square >= SQUARE_SHARE:
        notes.append(_note("augment: Resize", size, f"{square:.0%} of the images are about square"))
        return [{"Resize": {"height": size, "width": size}}]
    notes.append(_note("augment: LongestMaxSize + PadIfNeeded", size,
                        f"only {square:.0%} of the images are about square: no stretching"))
    return [{"LongestMaxSize": {"max_size": size}},
            {"PadIfNeeded": {"min_height": size, "min_width": size, "border_mode": 0, "fill": 0}}]


def normalize(found: Survey, channels: int) -> dict[str, Any]:
    mean, std = (found.mean, found.std) if channels == 3 else ([round(float(np.mean(found.mean)), 4)],
                                                              [round(float(np.mean(found.std)), 4)])
    return {"Normalize": {"mean": mean, "std": std, "max_pixel_value": 255.0}}


def augment_train(found: Survey, size: int, channels: int, notes: list[Choice]) -> list[dict[str, Any]]:
    """The training augmentations: resize, a flip when plausible, mild geometry and lighting, normalisation."""
    steps = resize_steps(found, size, notes)
    handed = [label for label in found.class_counts if NO_FLIP.search(label)]
    if handed:
        notes.append(_note("augment: no HorizontalFlip", None,
                            f"class names {handed[:5]} suggest writing or handedness: a mirror image may change "
                            "the class"))
    else:
        steps.append({"HorizontalFlip": {"p": 0.5}})
        notes.append(_note("augment: HorizontalFlip", 0.5, "no class name suggests writing or handedness"))
    steps.append({"Affine": {"rotate": [-15, 15], "translate_percent": [-0.08, 0.08], "scale": [0.85, 1.15],
                             "p": 0.7}})
    steps.append({"RandomBrightnessContrast": {"brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.4}})
    notes.append(_note("augment: no colour jitter", None, "colour may be what tells the classes apart"))
    steps.append(normalize(found, channels))
    notes.append(_note("augment: Normalize", {"mean": found.mean, "std": found.std},
                        "the data's own per-channel mean and standard deviation"))
    return steps


def schedule(found: Survey, template: dict[str, Any]) -> list[Choice]:
    """Batch size, epochs and early stopping for this many images (``TARGET_STEPS`` optimizer steps)."""
    data = template["data"]
    train_images = max(1, round(found.n_readable * (1 - data["val_fraction"] - data["test_fraction"])))
    batch = 32 if train_images < SMALL_DATA else template["train"]["batch_size"]
    per_epoch = math.ceil(train_images / batch)
    epochs = min(max(math.ceil(TARGET_STEPS / per_epoch), EPOCH_RANGE[0]), EPOCH_RANGE[1])
    patience = max(PATIENCE_SMALL, epochs // 3) if train_images < SMALL_DATA else (
        template["train"]["early_stopping_patience"])
    return [
        Choice("train.batch_size", batch, f"~{train_images} training images"
                                          + (f" (< {SMALL_DATA}: smaller batches, more steps)" if batch == 32 else "")),
        Choice("train.epochs", epochs, f"{per_epoch} steps per epoch; ~{TARGET_STEPS} steps train a small CNN from "
                                       f"scratch (within {EPOCH_RANGE[0]}–{EPOCH_RANGE[1]} epochs)"),
        Choice("train.early_stopping_patience", patience, "stops the run once val loss has not improved for "
                                                          f"{patience} epochs"),
    ]
