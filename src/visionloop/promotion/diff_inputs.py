"""What ``visionloop diff MODEL_A MODEL_B [IMAGES]`` compares: two models from ``--model``-style specs, and images.

A model is named like everywhere else (``models.spec``): a version number or alias of the project's
model, a ``models:/`` URI, or a bundle folder. The images are a folder (a class-per-folder layout gives
the true labels: a first folder named after a class of either model), a CSV manifest
(``path[,label]``, as ``predict-batch`` reads it), or by default the gate set: for two versions of the
project's model exactly what the promotion gate would judge them on (``gate_set.gate_set_for``), else
MODEL_A's held-out test set (MODEL_B's when A has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from visionloop.batch.inputs import InputSource
from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.data.images import InvalidImage, canonicalize_image_bytes, load_image
from visionloop.models.bundle import ServableModel
from visionloop.models.spec import load_model, spec_uri
from visionloop.models.uris import is_model_uri, parse_model_uri


@dataclass
class Compared:
    """A model to compare, where its bundle lies, and its version when it is one of the project's model."""

    model: ServableModel
    bundle_dir: Path
    project_version: str | None  # None: a bundle folder or another registered model


@dataclass
class DiffImages:
    images: list[np.ndarray]
    labels: list[str | None]  # None where the true label is not known
    source: str  # what they are, in words
    skipped: list[str]  # inputs that are not readable images, each with the reason


def load_compared(settings: Settings, spec: str) -> Compared:
    """The model ``spec`` names, loaded (a registered version is downloaded once into the version cache)."""
    uri = spec_uri(settings, spec)
    if not is_model_uri(uri):
        if not Path(uri).is_dir():
            raise FileNotFoundError(f"{spec!r} is neither a version, an alias, a models:/ URI nor a bundle folder")
        return Compared(load_model(settings, uri), Path(uri), None)  # a bundle folder: no MLflow
    from visionloop.models.cache import load_version, version_dir  # MLflow: only for the registry
    from visionloop.models.registry import resolve

    version = resolve(settings, uri)
    name = parse_model_uri(uri).name
    return Compared(load_version(settings, version), version_dir(settings, version),
                    str(version.version) if name == settings.model_name else None)


def diff_images(settings: Settings, a: Compared, b: Compared, images: Path | None) -> DiffImages:
    """The images to compare ``a`` and ``b`` on: ``images`` (a folder or a CSV manifest) or the gate set."""
    if images is None:
        return _gate_set(settings, a, b)
    source = InputSource.open(images)
    classes = set(a.model.classes) | set(b.model.classes)
    data = settings.params.data
    found = DiffImages([], [], str(images), [])
    for key in source.list_keys():
        try:
            with open(source.file(key), "rb") as handle:
                array = canonicalize_image_bytes(handle.read(), channels=a.model.channels, min_side=data.min_side,
                                                 max_pixels=data.max_pixels).array
        except (OSError, InvalidImage) as error:
            found.skipped.append(f"{key}: {error}")
            continue
        found.images.append(array)
        found.labels.append(_label(source, key, classes))
    if not found.images:
        raise ValueError(f"{images} holds no readable image ({len(found.skipped)} skipped)")
    return found


def _label(source: InputSource, key: str, classes: set[str]) -> str | None:
    """The manifest's label (blank: unknown), or a class-per-folder's first folder when it names a class."""
    if source.manifest is not None:
        return source.labels.get(key) or None
    folder = key.split("/", 1)[0] if "/" in key else None
    return folder if folder in classes else None


def _gate_set(settings: Settings, a: Compared, b: Compared) -> DiffImages:
    if a.project_version is not None and b.project_version is not None:
        from visionloop.promotion.gate_set import gate_set_for, unseen_by

        unseen = unseen_by(settings, a.project_version, b.project_version, b.bundle_dir)
        gate_set = gate_set_for(settings, a.bundle_dir, set(a.model.classes), unseen)
        note = f"the gate set of v{a.project_version} vs v{b.project_version}: {gate_set.info['production_note']}"
        return DiffImages(gate_set.images, list(gate_set.labels), note, [])
    for compared in (a, b):
        manifest = compared.bundle_dir / BUNDLE_FILES["test_set"] / "manifest.csv"
        if manifest.is_file():
            table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
            images = [load_image(manifest.parent / path) for path in table["path"]]
            return DiffImages(images, table["label"].tolist(), f"the held-out test set of {compared.bundle_dir}", [])
    raise FileNotFoundError("neither model has a held-out test set in its bundle: name the IMAGES to compare on")
