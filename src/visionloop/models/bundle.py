"""A model version in memory: the eager network, its eval pipeline, classes and drift reduction.

Serving, batch inference, monitoring and the promotion gate all predict through ``ServableModel``
so that they preprocess exactly as training did. Files on disk follow ``contracts.BUNDLE_FILES``;
registered versions reach disk through ``models.cache``. It needs torch and the network
(``models.network``), never the training stack (Lightning), so inference starts seconds sooner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionloop.contracts import BUNDLE_FILES
from visionloop.models.network import build_network, inference_network
from visionloop.training.preprocess import pipeline_from_json, to_tensor_batch


@dataclass
class Predictions:
    probabilities: np.ndarray  # N×C softmax
    embeddings: np.ndarray  # N×D penultimate features

    @property
    def labels_idx(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


@dataclass
class ServableModel:
    network: torch.nn.Module
    eval_transform_json: str
    classes: list[str]
    config: dict[str, Any]
    name: str = "local"
    version: str = "0"
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    reduction: dict[str, Any] | None = None  # fitted embedding reduction (visionloop.monitoring.features)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.network.eval()
        self.transform = pipeline_from_json(self.eval_transform_json)
        # predictions run on this folded channels_last copy (2× faster); ``network`` stays the trainable original
        self.inference = inference_network(self.network)

    @classmethod
    def from_dir(cls, directory: Path | str, **extra: Any) -> ServableModel:
        """Load from a directory laid out like the bundle artifacts (``bundle/…``)."""
        root = Path(directory)

        def read(key: str) -> Path:
            return root / BUNDLE_FILES[key]

        config = json.loads(read("config").read_text())
        network = build_network(config)
        network.load_state_dict(torch.load(read("state_dict"), map_location="cpu", weights_only=True))
        reduction_path = read("embedding_reduction")
        metrics_path = read("metrics")
        return cls(
            network=network,
            eval_transform_json=read("eval_transform").read_text(),
            classes=json.loads(read("classes").read_text()),
            config=config,
            reduction=json.loads(reduction_path.read_text()) if reduction_path.exists() else None,
            metrics=json.loads(metrics_path.read_text()) if metrics_path.exists() else {},
            **extra,
        )

    @property
    def channels(self) -> int:
        """Channels of the canonical images the network takes (1 = grayscale, 3 = RGB): how inputs are decoded."""
        return int(self.config["in_channels"])

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        return to_tensor_batch(self.transform, images)

    @torch.inference_mode()
    def predict_tensor(self, batch: torch.Tensor) -> Predictions:
        embeddings = self.inference.embedding(batch.contiguous(memory_format=torch.channels_last))
        logits = self.inference.head(embeddings)
        return Predictions(torch.softmax(logits, dim=1).numpy(), embeddings.numpy())

    def predict(self, images: list[np.ndarray]) -> Predictions:
        """Canonical uint8 images (H×W or H×W×C) → probabilities and embeddings."""
        if not images:
            n = len(self.classes)
            return Predictions(np.zeros((0, n), np.float32), np.zeros((0, self.config["embedding_dim"]), np.float32))
        return self.predict_tensor(self.preprocess(images))

