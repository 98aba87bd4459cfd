"""The datamodule draws labeled production images more often when asked, and only then."""

from __future__ import annotations

import pandas as pd
from torch.utils.data import RandomSampler, WeightedRandomSampler

from visionloop.config import Settings
from visionloop.healing.retrain import retrain_settings
from visionloop.training.datamodule import ImageDataModule

EVAL = Settings.load().params.augment.eval


def _manifest(with_origin: bool) -> pd.DataFrame:
    frame = pd.DataFrame({
        "abs_path": [f"/nowhere/{i}.png" for i in range(10)],
        "label": ["0", "1"] * 5,
        "split": ["train"] * 10,
    })
    if with_origin:
        frame["origin"] = ["base"] * 7 + ["production"] * 2 + ["correction"]
    return frame


def _datamodule(manifest: pd.DataFrame, origin_weights: dict[str, float] | None) -> ImageDataModule:
    return ImageDataModule(manifest, ["0", "1"], EVAL, EVAL, batch_size=4, origin_weights=origin_weights)


def test_production_images_are_weighted_in_the_train_loader_only() -> None:
    datamodule = _datamodule(_manifest(with_origin=True), {"production": 4})
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler)
    assert loader.sampler.weights.tolist() == [1.0] * 7 + [4.0] * 2 + [1.0]
    assert loader.sampler.num_samples == 10 and loader.sampler.replacement
    assert not isinstance(datamodule.val_dataloader().sampler, WeightedRandomSampler)


def test_no_weights_or_no_origin_column_means_plain_shuffling() -> None:
    for manifest, weights in ((_manifest(True), None), (_manifest(True), {"production": 1}), (_manifest(False),
                                                                                            {"production": 4})):
        loader = _datamodule(manifest, weights).train_dataloader()
        assert isinstance(loader.sampler, RandomSampler), (weights, manifest.columns.tolist())


def test_retrain_settings_carry_the_origin_weights_into_training() -> None:
    settings = Settings.load()
    retrain = retrain_settings(settings)
    assert retrain.params.train.origin_weights == settings.params.retrain.origin_weights
    assert retrain.params.train.epochs == settings.params.retrain.epochs
    assert settings.params.train.origin_weights == {}  # a first training has no production images
