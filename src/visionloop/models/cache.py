"""Registered versions on local disk: each version's bundle is downloaded once and kept.

``<state_dir>/models/<name>/<version>/`` holds a version's ``bundle/…`` files (``contracts.BUNDLE_FILES``)
and a ``.complete`` marker naming the training run they came from. A download goes to a hidden
sibling folder first and is renamed into place, so a half download is never used; the marker's run
id is checked on every use, so a registry that was reset (``v1`` now another run) is re-downloaded.
Serving, batch inference, monitoring, labeling, training from a base model and the promotion gate all
load registered models through here: no temporary folder is left behind, and a version is fetched
from the artifact store once per machine rather than once per use.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.models.onnx_bundle import load_bundle, onnx_cache_root
from visionloop.models.registry import model_version, resolve
from visionloop.models.tracking import point_mlflow_at
from visionloop.params import Runtime

COMPLETE = ".complete"


def version_dir(settings: Settings, version: ModelVersion) -> Path:
    """The local folder of a registered version's bundle, downloaded now if it is not there yet."""
    target = settings.state_dir / "models" / version.name / str(version.version)
    if _complete(target, version.run_id):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{version.version}-", dir=target.parent))
    try:
        point_mlflow_at(settings.tracking_uri)
        mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="bundle", dst_path=str(partial))
        (partial / COMPLETE).write_text(version.run_id)
        if target.exists() and not _complete(target, version.run_id):
            shutil.rmtree(target)  # a stale copy: another run registered under this name and version
        try:
            partial.rename(target)  # atomic: the folder appears complete or not at all
        except OSError:
            if not _complete(target, version.run_id):
                raise
            shutil.rmtree(partial)  # another process got there first
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _complete(target: Path, run_id: str) -> bool:
    marker = target / COMPLETE
    return marker.is_file() and marker.read_text() == run_id


def load_version(
    settings: Settings, version: ModelVersion, runtime: Runtime = "torch", threads: int | None = None
) -> ServableModel:
    """A registered version in memory, with its name, version, tags and aliases, on ``runtime`` (PyTorch unless
    a caller serves it: ``serving.runtime``/``batch.runtime``; ``threads``: ONNX Runtime's, see ``onnx_bundle``)."""
    return load_bundle(
        version_dir(settings, version),
        runtime,
        cache_root=onnx_cache_root(settings),
        threads=threads,
        name=version.name,
        version=str(version.version),
        tags=dict(version.tags or {}),
        aliases=list(version.aliases or []),
    )


def load_registered(
    settings: Settings, model_uri: str, runtime: Runtime = "torch", threads: int | None = None
) -> ServableModel:
    """The version a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI names now, in memory."""
    return load_version(settings, resolve(settings, model_uri), runtime, threads)


def load_project_version(
    settings: Settings, version: str, runtime: Runtime = "torch", threads: int | None = None
) -> ServableModel:
    """Version ``version`` of the project's registered model (``registry.model_name``), in memory."""
    return load_version(settings, model_version(settings, version), runtime, threads)
