"""Registered versions carry their ONNX export: stored once, at registration, beside the bundle.

``store_onnx`` exports a newly registered version (``models.onnx_bundle``), adds ``model.onnx`` and its
parity report to the training run's ``bundle/`` artifacts (``contracts.BUNDLE_FILES``), and places them in
the local version cache, so ``serving.runtime: onnx`` and ``batch.runtime: onnx`` load the very file that
was checked against PyTorch on the gate set instead of exporting again on every machine.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.models.cache import version_dir
from visionloop.models.onnx_bundle import export_bundle_dir
from visionloop.models.registry import model_version
from visionloop.models.tracking import add_artifacts

log = logging.getLogger(__name__)


def store_onnx(settings: Settings, version: str) -> Path | None:
    """Export version ``version`` of the project's model and store the ONNX file with it; its path in the cache.

    A network that cannot be exported does not stop registration: the failure is logged and None
    returned (an ONNX runtime then tries the export again on load, and a failed load never serves).
    """
    registered = model_version(settings, version)
    directory = version_dir(settings, registered)
    onnx, parity = directory / BUNDLE_FILES["onnx"], directory / BUNDLE_FILES["onnx_parity"]
    if onnx.is_file():
        return onnx  # a retried registration: stored already
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=directory) as scratch:
        out = Path(scratch)
        try:
            export_bundle_dir(directory, out, name=registered.name, version=str(registered.version))
        except Exception as error:  # noqa: BLE001 - any exporter failure: the version still registers, said loudly
            log.warning("version %s: ONNX export failed, stored without model.onnx (%s: %s)",
                        version, type(error).__name__, error)
            return None
        (out / "parity.json").rename(out / parity.name)
        add_artifacts(settings, registered.run_id,
                      [(out / onnx.name, "bundle"), (out / parity.name, "bundle")])
        shutil.move(out / parity.name, parity)
        shutil.move(out / onnx.name, onnx)  # last: its presence says both are there
    return onnx
