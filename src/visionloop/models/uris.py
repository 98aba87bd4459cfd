"""Model URIs: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``, as text.

Kept apart from ``visionloop.models.registry`` so that telling a registry URI from a bundle folder
imports nothing: ``visionloop drift --model DIR`` and the like never pay for MLflow.
"""

from __future__ import annotations

from typing import NamedTuple

from visionloop.contracts import CHAMPION

URI_SCHEME = "models:/"


class ModelUri(NamedTuple):
    """A parsed ``models:/NAME@ALIAS`` (``alias`` set) or ``models:/NAME/VERSION`` (``version`` set)."""

    name: str
    alias: str | None
    version: str | None


def is_model_uri(spec: str) -> bool:
    """Whether ``spec`` names a registered model (else it is a path)."""
    return spec.startswith(URI_SCHEME)


def version_uri(name: str, version: str) -> str:
    return f"{URI_SCHEME}{name}/{version}"


def alias_uri(name: str, alias: str = CHAMPION) -> str:
    return f"{URI_SCHEME}{name}@{alias}"


def parse_model_uri(model_uri: str) -> ModelUri:
    """``models:/name@alias`` or ``models:/name/3`` → (name, alias, version)."""
    if not is_model_uri(model_uri):
        raise ValueError(f"not a registry URI: {model_uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = model_uri.removeprefix(URI_SCHEME)
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in rest:
            return ModelUri(name, alias, None)
    else:
        name, _, version = rest.rpartition("/")
        if name and "/" not in name and version.isdigit():
            return ModelUri(name, None, version)
    raise ValueError(f"not a registry URI: {model_uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
