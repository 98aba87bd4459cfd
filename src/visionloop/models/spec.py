"""What a ``--model`` option names: a registered version (``models:/…``) or a bundle folder.

A bundle folder is loaded without importing MLflow (``ServableModel.from_dir`` needs torch only);
the registry, and with it MLflow, is imported only when the option names a registry URI.
"""

from __future__ import annotations

from pathlib import Path

from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.models.uris import is_model_uri


def load_model(settings: Settings, spec: str) -> ServableModel:
    """A ``models:/`` URI (downloaded once into the version cache) or a bundle folder (``contracts.BUNDLE_FILES``)."""
    if is_model_uri(spec):
        from visionloop.models.cache import load_registered  # MLflow: only for the registry

        return load_registered(settings, spec)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {spec!r} is neither a models:/ URI nor a bundle folder")
    return ServableModel.from_dir(path, name=path.resolve().name, version="local")
