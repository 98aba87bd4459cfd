"""The model version being watched, with what monitoring compares its traffic against (seam 3).

A registered version's bundle comes from the local copy that ``visionloop.models.cache`` keeps per
version (downloaded once); it must hold the reference profile, the per-image features of the held-out
traffic the version is expected to serve (``training.train.expected_traffic``: the base data's held-out
images or, for a model healed on labeled production images, those of them it did not train on). The
bundle's held-out test set supplies the "typical" image of each class shown beside the drifted images of a
report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.data.images import load_image
from visionloop.models.bundle import ServableModel
from visionloop.models.cache import version_dir
from visionloop.models.registry import RegistryError, resolve
from visionloop.models.uris import alias_uri, is_model_uri
from visionloop.monitoring.features import predict_in_chunks, reduce_embeddings


class NoModelToMonitor(RuntimeError):
    """There is no champion (or the named model does not exist): nothing to compare traffic with."""


@dataclass
class MonitoredModel:
    """The version being watched, its reference profile and the folder holding its bundle files."""

    model: ServableModel
    reference: pd.DataFrame
    bundle_dir: Path  # holds bundle/… (contracts.BUNDLE_FILES)
    typical: dict[str, Path] = field(default_factory=dict)  # class → a typical reference image (lazily)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return str(self.model.version)

    def typical_images(self) -> dict[str, Path]:
        """Per class, the held-out test image (``bundle/test_set``) nearest its class centre in embedding space."""
        if self.typical:
            return self.typical
        test_dir = self.bundle_dir / BUNDLE_FILES["test_set"]
        manifest_path = test_dir / "manifest.csv"
        if not manifest_path.exists():
            return {}
        manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        paths = [test_dir / p for p in manifest["path"]]
        embeddings = predict_in_chunks(self.model, [load_image(p) for p in paths]).embeddings
        if self.model.reduction is not None:
            embeddings = reduce_embeddings(embeddings, self.model.reduction)
        labels = manifest["label"].to_numpy(str)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            points = embeddings[rows]
            nearest = rows[np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1))]
            self.typical[str(label)] = paths[nearest]
        return self.typical


def load_monitored(settings: Settings, model: str | None = None) -> MonitoredModel:
    """What to watch: the champion (``model`` None), a ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` URI or
    a bundle folder (version "local"), with its reference profile.

    Raises ``NoModelToMonitor`` when there is no champion yet or the URI names no version.
    """
    if model is not None and not is_model_uri(model):
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"--model {model!r} is neither a models:/ URI nor a bundle folder")
        return monitored_from_dir(path, name=path.resolve().name, version="local")
    try:
        version = resolve(settings, model or alias_uri(settings.model_name))
    except RegistryError as error:
        if model is None:
            message = f"{settings.model_name} has no champion yet: train and register a model first"
            raise NoModelToMonitor(message) from None
        raise NoModelToMonitor(f"{model}: {error}") from None
    return monitored_from_dir(version_dir(settings, version), name=version.name, version=str(version.version))


def monitored_from_dir(directory: Path | str, *, name: str, version: str) -> MonitoredModel:
    """A bundle folder (``bundle/…``) as the monitored model; it must hold a reference profile."""
    root = Path(directory)
    profile = root / BUNDLE_FILES["reference_profile"]
    if not profile.exists():
        raise FileNotFoundError(f"{root} has no reference profile ({BUNDLE_FILES['reference_profile']})")
    model = ServableModel.from_dir(root, name=name, version=str(version))
    return MonitoredModel(model, pd.read_parquet(profile), root)
