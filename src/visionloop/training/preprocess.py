"""Albumentations pipelines from ``params.yaml``; the eval pipeline travels with the model."""

from __future__ import annotations

import json
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2


def build_pipeline(spec: list[dict[str, dict[str, Any]]], seed: int | None = None) -> A.Compose:
    """Build ``A.Compose`` from a list of ``{TransformName: kwargs}``; ToTensorV2 is appended."""
    transforms = []
    for item in spec:
        if len(item) != 1:
            raise ValueError(f"each transform must be one {{Name: kwargs}} mapping, got {item!r}")
        name, kwargs = next(iter(item.items()))
        cls = getattr(A, name, None)
        if cls is None:
            raise ValueError(f"unknown Albumentations transform {name!r}")
        transforms.append(cls(**(kwargs or {})))
    transforms.append(ToTensorV2())
    return A.Compose(transforms, seed=seed)


def pipeline_to_json(pipeline: A.Compose) -> str:
    return json.dumps(A.to_dict(pipeline))


def pipeline_from_json(text: str) -> A.Compose:
    return A.from_dict(json.loads(text))


def to_tensor_batch(pipeline: A.Compose, images: list[np.ndarray]) -> torch.Tensor:
    """Apply a pipeline to canonical uint8 images (H×W or H×W×C) and stack into N×C×H×W float32."""
    return torch.stack([pipeline(image=as_hwc(img))["image"].float() for img in images])


def as_hwc(image: np.ndarray) -> np.ndarray:
    return image[:, :, None] if image.ndim == 2 else image
