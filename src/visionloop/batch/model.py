"""The model a batch job runs: pinned to one registered version, or a local bundle with a stable identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.models.bundle import ServableModel
from visionloop.models.cache import load_registered
from visionloop.models.onnx_bundle import load_bundle, onnx_cache_root
from visionloop.models.registry import resolve
from visionloop.models.uris import alias_uri


def pin_model_uri(settings: Settings, model_uri: str | None = None) -> tuple[str, str]:
    """Resolve ``models:/NAME@ALIAS`` (or ``models:/NAME/V``; default: the project's champion) to (name, version),
    so shards load one version."""
    version = resolve(settings, model_uri or alias_uri(settings.model_name))
    return version.name, str(version.version)


def bundle_version(bundle: Path | str) -> str:
    """A local bundle's identity (its weights' hash), so an output never mixes two local models."""
    digest = hashlib.sha256((Path(bundle) / BUNDLE_FILES["state_dict"]).read_bytes()).hexdigest()
    return f"sha256-{digest[:12]}"


def load_model(settings: Settings, model_uri: str | None = None, bundle: Path | str | None = None) -> ServableModel:
    """A local bundle folder if given, else the registered version at ``model_uri`` (default: the champion), on
    ``batch.runtime``."""
    runtime, threads = settings.params.batch.runtime, settings.params.batch.torch_threads
    if bundle is not None:
        return load_bundle(Path(bundle), runtime, cache_root=onnx_cache_root(settings), threads=threads,
                           name="local", version=bundle_version(bundle))
    return load_registered(settings, model_uri or alias_uri(settings.model_name), runtime, threads)
