"""What a ``--model`` option names: a registered version (``models:/…``) or a bundle folder.

A bundle folder is loaded without importing MLflow (``ServableModel.from_dir`` needs torch only);
the registry, and with it MLflow, is imported only when the option names a registry URI.
"""

from __future__ import annotations

import re
from pathlib import Path

from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.models.uris import alias_uri, is_model_uri, version_uri

_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def spec_uri(settings: Settings, spec: str) -> str:
    """A bare version number (``3``) or alias (``champion``) of the project's model as its ``models:/`` URI; a URI
    or a path unchanged. An existing file or folder of that name wins over an alias."""
    if is_model_uri(spec) or Path(spec).exists():
        return spec
    if spec.isdigit():
        return version_uri(settings.model_name, spec)
    return alias_uri(settings.model_name, spec) if _ALIAS.match(spec) else spec


def load_model(settings: Settings, spec: str) -> ServableModel:
    """A ``models:/`` URI (downloaded once into the version cache) or a bundle folder (``contracts.BUNDLE_FILES``)."""
    if is_model_uri(spec):
        from visionloop.models.cache import load_registered  # MLflow: only for the registry

        return load_registered(settings, spec)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {spec!r} is neither a models:/ URI nor a bundle folder")
    return ServableModel.from_dir(path, name=path.resolve().name, version="local")
