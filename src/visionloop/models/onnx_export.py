"""A network as ONNX: the export itself, int8 quantization, and how far the result is from PyTorch.

``export_network`` exports any network with the ``.embedding(x)`` / ``.head`` interface of
``models.network`` (the small CNN, timm backbones) so that ONNX Runtime answers what ``ServableModel``
answers: two outputs, ``probabilities`` (softmax) and ``embeddings`` (the drift features' input), and
a dynamic batch axis. ``models.onnx_bundle`` exports a whole bundle with these parts (``model.onnx``,
the preprocessing spec, ``parity.json``); ``models.onnx_runtime`` serves the file. No MLflow here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from visionloop.contracts import BUNDLE_FILES
from visionloop.data.images import load_image
from visionloop.models.bundle import Predictions, ServableModel

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "embeddings")
OPSET = 18


@dataclass(frozen=True)
class Parity:
    """How far an exported model's answers are from PyTorch's on the same images."""

    max_abs_diff: float  # largest difference of any class probability
    top1_agreement: float  # share of images with the same predicted class
    n_images: int


class _ProbabilitiesAndEmbeddings(nn.Module):
    """The served graph: what ``ServableModel.predict_tensor`` computes, as one module."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.network.embedding(x)
        return torch.softmax(self.network.head(embeddings), dim=1), embeddings


def export_network(network: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``network`` (eval mode, unchanged) as ONNX at ``path``; return the exporter that worked.

    The TorchScript exporter (``dynamo=False``) is tried first: on these CNNs it writes the same graph
    (parity ~3e-8 on digits and a timm ResNet) in 0.1–0.5 s, where ``torch.onnx.export(dynamo=True)``
    (torch.export, then onnxscript) takes 1–3 s a call and ~10 s for the first in a process, which
    every registration pays. torch deprecates the TorchScript exporter, so the dynamo exporter is the
    fallback for a network it cannot trace or a torch without it. ``example`` is one preprocessed batch
    (its height, width and channels are fixed in the graph, its batch axis is not); the caller's parity
    check on the gate set (``onnx_bundle.export_bundle``) judges whichever exporter wrote the file.
    """
    wrapped = _ProbabilitiesAndEmbeddings(network).eval()
    example = example[:2] if len(example) >= 2 else example.repeat(2, 1, 1, 1)  # batch 1 would be specialised
    path.parent.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": list(OUTPUT_NAMES), "opset_version": OPSET}
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    try:
        with warnings.catch_warnings():  # its deprecation notice: the fallback below is the answer to it
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapped, (example,), str(path), dynamo=False, dynamic_axes=axes, **common)
        return "torchscript"
    except Exception as error:  # noqa: BLE001 - any failure of the legacy exporter: use the torch.export one
        log.warning("torch.onnx TorchScript export failed (%s: %s); using the dynamo exporter",
                    type(error).__name__, error)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():  # torch.export's notes on its own internals: nothing a user can act on
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={"x": {0: batch}}, **common)
    return "dynamo"


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """ONNX Runtime static int8 quantization (QDQ, per-channel weights) calibrated on ``calibration``.

    Static quantization keeps convolutions in int8 with activation scales measured on real inputs;
    dynamic quantization only covers MatMul/Conv weights and leaves a CNN mostly in float.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 32)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": False})


def parity(reference: Predictions, candidate: Predictions) -> Parity:
    """``candidate``'s distance from ``reference`` on the same images."""
    n = len(reference.probabilities)
    if n == 0:
        raise ValueError("parity needs at least one image")
    diff = float(np.abs(reference.probabilities - candidate.probabilities).max())
    agree = float((reference.labels_idx == candidate.labels_idx).mean())
    return Parity(max_abs_diff=diff, top1_agreement=agree, n_images=n)


def gate_images(bundle_dir: Path) -> list[np.ndarray]:
    """The images of a bundle's frozen gate set (``test_set``); empty when the bundle has none."""
    manifest = bundle_dir / BUNDLE_FILES["test_set"] / "manifest.csv"
    if not manifest.is_file():
        return []
    paths = pd.read_csv(manifest, dtype=str, keep_default_na=False)["path"]
    return [load_image(manifest.parent / p) for p in paths]


def preprocessing_spec(model: ServableModel, example: torch.Tensor) -> dict[str, Any]:
    """What a client must do before the graph: the eval transform, the channels, the input, the classes."""
    return {
        "eval_transform": json.loads(model.eval_transform_json),
        "channels": model.channels,
        "classes": model.classes,
        "input": {"name": INPUT_NAME, "shape": ["batch", *example.shape[1:]], "dtype": "float32", "layout": "NCHW"},
        "outputs": list(OUTPUT_NAMES),
    }


def atomic_write(target: Path, write: Any) -> Any:
    """Run ``write(tmp)`` on a temporary sibling of ``target``, then rename it into place."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=target.suffix, dir=target.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        value = write(tmp)
        tmp.chmod(0o644)  # mkstemp's 0600 would hide an export from the other users of a shared model folder
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return value
