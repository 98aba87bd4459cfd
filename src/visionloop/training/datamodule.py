"""LightningDataModule over a prepared manifest (path, label, split)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from visionloop.training.preprocess import as_hwc, build_pipeline


class ManifestDataset(Dataset):
    """Decodes lazily so memory stays flat whatever the data set size."""

    def __init__(self, frame: pd.DataFrame, class_index: dict[str, int], pipeline) -> None:
        self.paths = frame["abs_path"].tolist()
        self.targets = [class_index[label] for label in frame["label"]]
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from visionloop.data.images import load_image

        image = self.pipeline(image=as_hwc(load_image(self.paths[i])))["image"].float()
        return image, self.targets[i]


def stratified_subset(frame: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A per-class fraction of rows (at least one per class), for quick runs and tests."""
    if fraction >= 1.0:
        return frame
    return pd.concat(
        group.sample(max(1, round(len(group) * fraction)), random_state=seed) for _, group in frame.groupby("label")
    )


class ImageDataModule(pl.LightningDataModule):
    def __init__(
        self,
        manifest: pd.DataFrame,
        classes: list[str],
        train_spec: list[dict[str, Any]],
        eval_spec: list[dict[str, Any]],
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 42,
        limit_train_fraction: float = 1.0,
        origin_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.manifest = manifest
        self.classes = classes
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.train_pipeline = build_pipeline(train_spec, seed=seed)
        self.eval_pipeline = build_pipeline(eval_spec)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.limit_train_fraction = limit_train_fraction
        self.origin_weights = {k: float(v) for k, v in (origin_weights or {}).items()}

    def split(self, name: str) -> pd.DataFrame:
        frame = self.manifest[self.manifest["split"] == name]
        if name == "train":
            frame = stratified_subset(frame, self.limit_train_fraction, self.seed)
        return frame

    def sample_weights(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Per-row sampling weights from ``origin_weights`` (e.g. ``{"production": 4}``), or None.

        A few hundred labeled production images drown in a clean training set; drawing them more often
        lets a retrain learn the new conditions without dropping the old data (benchmarks/transfer.py).
        """
        if "origin" not in frame.columns or all(w == 1.0 for w in self.origin_weights.values()):
            return None
        return frame["origin"].map(self.origin_weights).fillna(1.0).to_numpy(dtype=float)

    def _loader(self, name: str, pipeline, shuffle: bool) -> DataLoader:
        frame = self.split(name)
        dataset = ManifestDataset(frame, self.class_index, pipeline)
        generator = torch.Generator().manual_seed(self.seed)
        weights = self.sample_weights(frame) if name == "train" else None
        sampler = None
        if weights is not None:  # an epoch is still len(dataset) draws, weighted, with replacement
            sampler = WeightedRandomSampler(weights.tolist(), len(weights), replacement=True, generator=generator)
            shuffle = False
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_pipeline, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_pipeline, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_pipeline, shuffle=False)

    def label_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.manifest["label"].value_counts().sort_index().items()}


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Sorted class names; numeric labels sort numerically."""
    labels = manifest["label"].astype(str).unique().tolist()
    return sorted(labels, key=lambda s: (0, int(s)) if s.isdigit() else (1, s))


def load_images(paths: list[str]) -> list[np.ndarray]:
    from visionloop.data.images import load_image

    return [load_image(p) for p in paths]
