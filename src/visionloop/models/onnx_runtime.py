"""The ONNX Runtime twin of ``ServableModel``: same preprocessing, classes, metadata and ``predict`` answers.

``OnnxModel`` *is* a ``ServableModel`` (name, version, tags, reduction, eval transform, the network's
weights) whose ``predict_tensor`` runs an ONNX Runtime session instead of PyTorch, so hot swap
(``serving.reload``), micro-batching (``serving.batcher``), batch inference and the prediction log
treat both runtimes alike. ``models.onnx_bundle.load_bundle`` picks the runtime from params.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionloop.models.bundle import Predictions, ServableModel
from visionloop.models.onnx_export import INPUT_NAME
from visionloop.training.preprocess import pipeline_from_json


@dataclass
class OnnxModel(ServableModel):
    """A ``ServableModel`` that predicts with ONNX Runtime (``onnx_path``) on ``threads`` intra-op threads."""

    onnx_path: Path | None = None
    threads: int | None = None  # None: ONNX Runtime's default (one per core)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        if self.onnx_path is None:
            raise ValueError("OnnxModel needs onnx_path")
        self.network.eval()
        self.transform = pipeline_from_json(self.eval_transform_json)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])

    @classmethod
    def from_servable(cls, model: ServableModel, onnx_path: Path, threads: int | None = None) -> OnnxModel:
        """The ONNX twin of an already loaded model (same weights, metadata and preprocessing)."""
        return cls(network=model.network, eval_transform_json=model.eval_transform_json, classes=model.classes,
                   config=model.config, name=model.name, version=model.version, tags=model.tags,
                   aliases=model.aliases, reduction=model.reduction, metrics=model.metrics,
                   onnx_path=onnx_path, threads=threads)

    def predict_tensor(self, batch: torch.Tensor) -> Predictions:
        """A preprocessed N×C×H×W batch → probabilities and embeddings, by ONNX Runtime."""
        x = np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)
        probabilities, embeddings = self.session.run(None, {INPUT_NAME: x})
        return Predictions(probabilities, embeddings)
