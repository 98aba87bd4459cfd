"""Where served models come from: the ``ModelSource`` seam and the sources ``--model-uri`` names.

The server only needs two calls: ``current_version()`` (cheap, polled every ``serving.poll_seconds``:
where the alias points now) and ``load(version)`` (slow: returns a ``ServableModel`` whose ``version``
is that version). The registry-backed source is ``visionloop.promotion.registry.registry_model_source``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from visionloop.contracts import CHAMPION

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@runtime_checkable
class ModelSource(Protocol):
    """What the server follows."""

    def current_version(self) -> str | None:
        """The version that should serve now (None: nothing to serve yet)."""

    def load(self, version: str) -> ServableModel:
        """Load one version, with ``name``, ``version``, ``tags`` and ``aliases`` filled in."""


class LocalBundleSource:
    """A bundle directory laid out like ``seams.BUNDLE_FILES``: one fixed version, never reloads."""

    def __init__(self, directory: Path | str, name: str | None = None, version: str = "local") -> None:
        self.directory = Path(directory)
        self.name = name or self.directory.resolve().name
        self.version = version

    def current_version(self) -> str | None:
        return self.version

    def load(self, version: str) -> ServableModel:
        from visionloop.models.bundle import ServableModel

        return ServableModel.from_dir(self.directory, name=self.name, version=version)


class PinnedVersionSource:
    """One fixed version of another source (``models:/NAME/VERSION``)."""

    def __init__(self, source: ModelSource, version: str) -> None:
        self.source = source
        self.version = str(version)

    def current_version(self) -> str | None:
        return self.version

    def load(self, version: str) -> ServableModel:
        return self.source.load(version)


def source_from_uri(settings: Settings, uri: str | None) -> ModelSource:
    """The source for ``visionloop serve --model-uri``.

    None → follow ``registry.model_name@champion``; ``models:/NAME@ALIAS`` → follow that alias;
    ``models:/NAME/VERSION`` → that version only; a folder → a local bundle (``seams.BUNDLE_FILES``).
    """

    def registry(name: str | None, alias: str) -> ModelSource:
        from visionloop.promotion.registry import registry_model_source

        named = settings
        if name is not None and name != settings.model_name:
            named = settings.with_overrides({"registry": {"model_name": name}})
        return registry_model_source(named, alias=alias)

    if uri is None:
        return registry(None, CHAMPION)
    if match := _ALIAS_URI.match(uri):
        return registry(match["name"], match["alias"])
    if match := _VERSION_URI.match(uri):
        return PinnedVersionSource(registry(match["name"], CHAMPION), match["version"])
    path = settings.path(uri)
    if path.is_dir():
        return LocalBundleSource(path, name=settings.model_name)
    raise ValueError(f"--model-uri {uri!r} is not models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder")
