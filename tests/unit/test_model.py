"""Transfer-learning strategies freeze what they promise, checked with the real Lightning trainer."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from visionloop.models.network import build_network, inference_network
from visionloop.training.model import ImageClassifier


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(32, 1, 16, 16, generator=generator) * 3 + 1  # far from BatchNorm's initial statistics
    labels = torch.randint(0, 3, (32,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def _fit(model: ImageClassifier) -> None:
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _loader(), _loader())


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def test_feature_extraction_keeps_backbone_weights_and_batchnorm_statistics() -> None:
    model = ImageClassifier(num_classes=3, widths=(4, 8), embedding_dim=8, strategy="feature_extraction")
    model.apply_strategy()
    backbone_before = _snapshot(model.net.blocks) | {f"embed.{k}": v for k, v in _snapshot(model.net.embed).items()}
    head_before = _snapshot(model.net.head)

    _fit(model)

    backbone_after = _snapshot(model.net.blocks) | {f"embed.{k}": v for k, v in _snapshot(model.net.embed).items()}
    changed = [name for name in backbone_before if not torch.equal(backbone_before[name], backbone_after[name])]
    assert changed == [], f"frozen backbone changed: {changed}"
    assert any(not torch.equal(head_before[k], v) for k, v in model.net.head.state_dict().items())


def test_full_training_updates_batchnorm_statistics() -> None:
    model = ImageClassifier(num_classes=3, widths=(4, 8), embedding_dim=8, strategy="full")
    model.apply_strategy()
    before = model.net.blocks[0][1].running_mean.clone()
    _fit(model)
    assert not torch.equal(before, model.net.blocks[0][1].running_mean)


@pytest.mark.parametrize(("blocks", "trainable_blocks"), [(0, []), (1, [2]), (3, [0, 1, 2])])
def test_fine_tuning_unfreezes_the_last_blocks(blocks: int, trainable_blocks: list[int]) -> None:
    model = ImageClassifier(num_classes=3, widths=(4, 8, 8), embedding_dim=8, strategy="fine_tuning",
                            fine_tune_blocks=blocks)
    model.apply_strategy()
    unfrozen = [i for i, block in enumerate(model.net.blocks) if all(p.requires_grad for p in block.parameters())]
    assert unfrozen == trainable_blocks
    assert all(p.requires_grad for p in model.net.head.parameters())
    assert all(p.requires_grad for p in model.net.embed.parameters())


def test_fine_tune_blocks_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="fine_tune_blocks"):
        ImageClassifier(num_classes=3, widths=(4, 8), strategy="fine_tuning", fine_tune_blocks=3)


def test_inference_network_answers_like_the_trained_one_and_leaves_it_alone() -> None:
    model = ImageClassifier(num_classes=3, widths=(4, 8), embedding_dim=8, strategy="full")
    _fit(model)  # BatchNorm statistics and affine terms far from their initial values
    network = model.net.eval()
    before = _snapshot(network)
    fast = inference_network(network)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 3 + 1
    with torch.inference_mode():
        torch.testing.assert_close(fast.embedding(images), network.embedding(images), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(images), network(images), rtol=1e-4, atol=1e-5)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules()) == 4
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_max_pooling_is_kept_in_the_architecture_and_a_config_without_it_is_avg() -> None:
    model = ImageClassifier(num_classes=3, widths=(4, 8), embedding_dim=8, pooling="max")
    assert model.architecture["pooling"] == "max"
    rebuilt = build_network({**model.architecture, "pretrained": None})
    rebuilt.load_state_dict(model.net.state_dict())
    assert isinstance(rebuilt.embed[0], torch.nn.AdaptiveMaxPool2d)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        features = model.net.eval().blocks[1](model.net.blocks[0](images))
        pooled = rebuilt.eval().embed[0](features).flatten(1)
    assert torch.equal(pooled, features.amax(dim=(2, 3)))
    old = {k: v for k, v in model.architecture.items() if k != "pooling"}  # a bundle from before model.pooling
    assert isinstance(build_network(old).embed[0], torch.nn.AdaptiveAvgPool2d)
    with pytest.raises(ValueError, match="pooling"):
        ImageClassifier(num_classes=3, widths=(4, 8), pooling="median")
