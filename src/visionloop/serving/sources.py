"""Where served models come from: the ``ModelSource`` seam and the sources ``--model-uri`` names.

The server only needs two calls: ``current_version()`` (cheap, polled every ``serving.poll_seconds``:
where the alias points now) and ``load(version)`` (slow: returns a ``ServableModel`` whose ``version``
is that version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from visionloop.config import Settings
from visionloop.contracts import CHAMPION
from visionloop.models.bundle import ServableModel
from visionloop.models.cache import load_project_version
from visionloop.models.onnx_bundle import load_bundle, onnx_cache_root
from visionloop.models.registry import alias_version
from visionloop.models.uris import is_model_uri, parse_model_uri


@runtime_checkable
class ModelSource(Protocol):
    """What the server follows."""

    def current_version(self) -> str | None:
        """The version that should serve now (None: nothing to serve yet)."""

    def load(self, version: str) -> ServableModel:
        """Load one version, with ``name``, ``version``, ``tags`` and ``aliases`` filled in."""


class RegistryModelSource:
    """An alias of the registered model ``registry.model_name``: serving follows it as it moves."""

    def __init__(self, settings: Settings, alias: str = CHAMPION) -> None:
        self.settings = settings
        self.alias = alias
        self.name = settings.model_name

    def __repr__(self) -> str:
        return f"RegistryModelSource({self.name!r}@{self.alias})"

    def current_version(self) -> str | None:
        """Where the alias points now (one registry call); None when nothing holds it yet."""
        return alias_version(self.settings, self.alias)

    def load(self, version: str) -> ServableModel:
        """One version, from the local cache of registered versions (downloaded on first use), on
        ``serving.runtime``."""
        serving = self.settings.params.serving
        return load_project_version(self.settings, str(version), serving.runtime, serving.torch_threads)


class LocalBundleSource:
    """A bundle directory laid out like ``contracts.BUNDLE_FILES``: one fixed version, never reloads.

    With ``settings`` it loads on ``serving.runtime`` (an ONNX export is cached in the state dir); without, on
    PyTorch.
    """

    def __init__(
        self, directory: Path | str, name: str | None = None, version: str = "local", settings: Settings | None = None
    ) -> None:
        self.directory = Path(directory)
        self.name = name or self.directory.resolve().name
        self.version = version
        self.settings = settings

    def current_version(self) -> str | None:
        return self.version

    def load(self, version: str) -> ServableModel:
        if self.settings is None:
            return ServableModel.from_dir(self.directory, name=self.name, version=version)
        serving = self.settings.params.serving
        return load_bundle(self.directory, serving.runtime, cache_root=onnx_cache_root(self.settings),
                           threads=serving.torch_threads, name=self.name, version=version)


class PinnedVersionSource:
    """One fixed version of another source (``models:/NAME/VERSION``)."""

    def __init__(self, source: ModelSource, version: str) -> None:
        self.source = source
        self.version = str(version)

    def current_version(self) -> str | None:
        return self.version

    def load(self, version: str) -> ServableModel:
        return self.source.load(version)


def registry_model_source(settings: Settings, alias: str = CHAMPION, name: str | None = None) -> RegistryModelSource:
    """The source serving polls for hot reload: ``alias`` of ``name`` (default: the project's model)."""
    if name is not None and name != settings.model_name:
        settings = settings.with_overrides({"registry": {"model_name": name}})
    return RegistryModelSource(settings, alias)


def source_from_uri(settings: Settings, uri: str | None) -> ModelSource:
    """The source for ``visionloop serve --model-uri``.

    None → follow ``registry.model_name@champion``; ``models:/NAME@ALIAS`` → follow that alias;
    ``models:/NAME/VERSION`` → that version only; a folder → a local bundle (``contracts.BUNDLE_FILES``).
    """
    if uri is None:
        return registry_model_source(settings)
    if is_model_uri(uri):
        try:
            name, alias, version = parse_model_uri(uri)
        except ValueError:
            raise ValueError(
                f"--model-uri {uri!r} is not models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder"
            ) from None
        if alias is not None:
            return registry_model_source(settings, alias, name)
        assert version is not None
        return PinnedVersionSource(registry_model_source(settings, CHAMPION, name), version)
    path = settings.path(uri)
    if path.is_dir():
        return LocalBundleSource(path, name=settings.model_name, settings=settings)
    raise ValueError(f"--model-uri {uri!r} is not models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder")
