"""A model version in memory: the eager network, its eval pipeline, classes and drift reduction.

Serving, batch inference, monitoring and the promotion gate all predict through ``ServableModel``
so that they preprocess exactly as training did. Files on disk follow ``seams.BUNDLE_FILES``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionloop.contracts import BUNDLE_FILES
from visionloop.training.model import build_network, inference_network
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


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/3`` → (name, alias, version)."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"not a registry URI: {model_uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = model_uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version:
        raise ValueError(f"not a registry URI: {model_uri!r}")
    return name, None, version


def load_registered(model_uri: str, tracking_uri: str, destination: Path | None = None) -> ServableModel:
    """Download a registered version's bundle and build it; the version, aliases and tags come along."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    from visionloop.models.tracking import point_mlflow_at

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias, version = parse_model_uri(model_uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    target = destination or Path(tempfile.mkdtemp(prefix=f"visionloop-{name}-v{mv.version}-"))
    point_mlflow_at(tracking_uri)
    mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="bundle", dst_path=str(target))
    return ServableModel.from_dir(
        target, name=name, version=str(mv.version), tags=dict(mv.tags), aliases=list(mv.aliases or [])
    )
