"""A bundle exported to ONNX, checked, and loaded on the runtime that params choose.

``export_bundle`` writes what a serving stack outside this project needs: ``model.onnx`` (and with
``int8`` ``model.int8.onnx``), ``preprocessing.json`` and ``parity.json`` — the probabilities' largest
difference from PyTorch and the top-1 agreement, on the bundle's gate set (its frozen ``test_set``, see
``promotion.gate_set``), so an export that changes answers is visible before anything serves it.

``load_bundle`` is where ``serving.runtime`` / ``batch.runtime`` pick PyTorch or ONNX Runtime. The ONNX
file comes with a registered version (``contracts.BUNDLE_FILES["onnx"]``, stored at registration); a
bundle without one is exported on first load into the state dir's model cache
(``<state_dir>/models/.onnx/<weights digest>/``; hidden, so no registered model name can collide with it)
and reused from there. No MLflow here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.models.bundle import Predictions, ServableModel
from visionloop.models.onnx_export import (
    Parity,
    atomic_write,
    export_network,
    gate_images,
    parity,
    preprocessing_spec,
    quantize_int8,
)
from visionloop.models.onnx_runtime import OnnxModel
from visionloop.params import Runtime

GATE_SET = "the bundle's gate set (test_set), preprocessed by its eval transform"
_PARITY_BATCH = 256  # images per forward pass when measuring parity


@dataclass(frozen=True)
class ExportResult:
    onnx: Path
    exporter: str  # "dynamo" (torch.export + onnxscript) or "torchscript" (the legacy exporter, the fallback)
    parity: Parity
    int8: Path | None = None
    int8_parity: Parity | None = None


def export_bundle(
    model: ServableModel, images: list[np.ndarray], out_dir: Path, *, int8: bool = False, measured_on: str = GATE_SET
) -> ExportResult:
    """Export ``model`` into ``out_dir`` and judge the export on ``images`` (the gate set; with ``int8`` also
    the calibration set of the quantized copy). Files are renamed into place, never seen half written."""
    if not images:
        raise ValueError("no images to measure parity on (the bundle has no test_set)")
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = model.preprocess(images)
    onnx_path = out_dir / "model.onnx"
    exporter = atomic_write(onnx_path, lambda tmp: export_network(model.network, batch, tmp))
    reference = _in_batches(model.predict_tensor, batch)
    fp32 = parity(reference, _in_batches(OnnxModel.from_servable(model, onnx_path).predict_tensor, batch))
    result = ExportResult(onnx_path, exporter, fp32)
    if int8:
        int8_path = out_dir / "model.int8.onnx"
        atomic_write(int8_path, lambda tmp: quantize_int8(onnx_path, tmp, batch.numpy()))
        quantized = OnnxModel.from_servable(model, int8_path)
        result = ExportResult(onnx_path, exporter, fp32, int8_path,
                              parity(reference, _in_batches(quantized.predict_tensor, batch)))
    spec = preprocessing_spec(model, batch)
    atomic_write(out_dir / "preprocessing.json", lambda tmp: tmp.write_text(json.dumps(spec, indent=2)))
    report = parity_report(model, result, measured_on)
    atomic_write(out_dir / "parity.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    return result


def parity_report(model: ServableModel, result: ExportResult, measured_on: str) -> dict[str, Any]:
    """``parity.json``: fp32 (and int8) parity against the PyTorch runtime, and where it was measured."""
    report: dict[str, Any] = {
        "model": {"name": model.name, "version": model.version},
        "measured_on": measured_on,
        "reference": "PyTorch (ServableModel.predict_tensor)",
        "exporter": result.exporter,
        "torch": torch.__version__,
        "fp32": asdict(result.parity),
    }
    if result.int8_parity is not None:
        report["int8"] = {**asdict(result.int8_parity),
                          "quantization": "onnxruntime static QDQ, per-channel, calibrated on these images"}
    return report


def _in_batches(predict: Callable[[torch.Tensor], Predictions], batch: torch.Tensor) -> Predictions:
    """``predict`` over ``batch`` in slices, so memory stays flat on a big gate set."""
    parts = [predict(batch[i : i + _PARITY_BATCH]) for i in range(0, len(batch), _PARITY_BATCH)]
    return Predictions(np.concatenate([p.probabilities for p in parts]), np.concatenate([p.embeddings for p in parts]))


def export_bundle_dir(directory: Path, out_dir: Path, *, int8: bool = False, **extra: Any) -> ExportResult:
    """Export the bundle folder ``directory`` (``extra``: name, version… for the report), judged on its gate set;
    a bundle without a test set is judged on a few stand-in images, and ``parity.json`` says so."""
    model = ServableModel.from_dir(directory, **extra)
    images, measured_on = gate_images(directory), GATE_SET
    if not images:
        rng = np.random.default_rng(0)
        shape = (32, 32) if model.channels == 1 else (32, 32, model.channels)
        images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(8)]
        measured_on = "8 random images (the bundle has no test_set)"
    return export_bundle(model, images, out_dir, int8=int8, measured_on=measured_on)


def weights_digest(directory: Path) -> str:
    """Which network a bundle holds: its weights and architecture (an export is valid for exactly these)."""
    digest = hashlib.sha256((directory / BUNDLE_FILES["state_dict"]).read_bytes())
    digest.update((directory / BUNDLE_FILES["config"]).read_bytes())
    return digest.hexdigest()[:16]


def onnx_cache_root(settings: Settings) -> Path:
    """Where bundles without an ONNX file get one exported: the state dir's model cache."""
    return settings.state_dir / "models" / ".onnx"


def onnx_for_bundle(directory: Path, cache_root: Path) -> Path:
    """The bundle's own ONNX file, else the one exported for its weights under ``cache_root`` (exported now if
    missing; the export folder appears complete or not at all, so concurrent loaders never read half a file)."""
    shipped = directory / BUNDLE_FILES["onnx"]
    if shipped.is_file():
        return shipped
    target = cache_root / weights_digest(directory)
    if (target / "model.onnx").is_file():
        return target / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        export_bundle_dir(directory, partial)
        try:
            partial.rename(target)
        except OSError:
            if not (target / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone after the rename; a leftover if another process won
    return target / "model.onnx"


def load_bundle(
    directory: Path, runtime: Runtime, *, cache_root: Path, threads: int | None, **extra: Any
) -> ServableModel:
    """A bundle folder in memory on ``runtime``: ``torch`` (``ServableModel``) or ``onnx`` (``OnnxModel``).

    ``extra`` (name, version, tags, aliases) goes on as to ``ServableModel.from_dir``; ``threads`` is ONNX
    Runtime's intra-op thread count (the torch runtime follows ``torch.set_num_threads``).
    """
    if runtime == "torch":
        return ServableModel.from_dir(directory, **extra)
    onnx_path = onnx_for_bundle(Path(directory), cache_root)
    return OnnxModel.from_dir(directory, onnx_path=onnx_path, threads=threads, **extra)
