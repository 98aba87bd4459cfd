"""timm backbones behind the small CNN's interface: names, stages, strategies, the inference copy, local weights.

Tiny real timm networks (resnet10t, mobilenetv3_small_050) at 32 px with random weights; nothing is downloaded
(``HF_HUB_OFFLINE`` is set by tests/conftest.py, and no test asks for ``hub``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from visionloop.models.backbones import TimmNetwork, load_pretrained
from visionloop.models.network import build_network, inference_network
from visionloop.params import ModelParams
from visionloop.training.model import ImageClassifier


def _loader(channels: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, channels, 32, 32, generator=generator) * 3 + 1  # far from BatchNorm's initial statistics
    labels = torch.randint(0, 3, (16,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def _fit(model: ImageClassifier, channels: int) -> None:
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, _loader(channels))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def test_an_unknown_timm_name_is_refused_with_close_matches() -> None:
    with pytest.raises(ValueError, match=r"no model 'mobilenetv3_smal_100'.*mobilenetv3_small_100"):
        build_network({"backbone": "timm:mobilenetv3_smal_100", "num_classes": 3, "in_channels": 3, "dropout": 0.0})


def test_params_refuse_a_malformed_backbone_and_hub_without_timm() -> None:
    shape = {"widths": [4], "embedding_dim": 8, "dropout": 0.0, "pooling": "avg"}
    params = ModelParams(backbone="timm:resnet10t", pretrained="weights/r.safetensors", **shape)
    assert params.backbone == "timm:resnet10t"
    with pytest.raises(ValidationError, match="backbone"):
        ModelParams(backbone="resnet18", pretrained=None, **shape)
    with pytest.raises(ValidationError, match="hub"):
        ModelParams(backbone="small_cnn", pretrained="hub", **shape)


@pytest.mark.parametrize(("backbone", "channels"), [("timm:resnet10t", 1), ("timm:mobilenetv3_small_050", 3)])
def test_feature_extraction_freezes_the_timm_backbone_and_its_batchnorm(backbone: str, channels: int) -> None:
    model = ImageClassifier(num_classes=3, in_channels=channels, backbone=backbone, dropout=0.0,
                            strategy="feature_extraction")
    model.apply_strategy()
    backbone_before, head_before = _snapshot(model.net.backbone), _snapshot(model.net.head)
    _fit(model, channels)
    changed = [k for k, v in model.net.backbone.state_dict().items() if not torch.equal(backbone_before[k], v)]
    assert changed == [], f"frozen backbone changed: {changed[:5]}"
    assert any(not torch.equal(head_before[k], v) for k, v in model.net.head.state_dict().items())


@pytest.mark.parametrize(
    ("backbone", "blocks", "trainable"),
    [
        ("timm:resnet10t", 1, {"layer4"}),
        ("timm:resnet10t", 2, {"layer3", "layer4"}),
        ("timm:resnet10t", 0, set()),
        # feature_info of MobileNetV3 ends stages at bn1, blocks.0, .1, .3, .5: the last stage is blocks 4-5, and
        # the 1×1 conv_head after it trains whenever the backbone is fine-tuned
        ("timm:mobilenetv3_small_050", 1, {"blocks.4", "blocks.5", "conv_head"}),
    ],
)
def test_fine_tuning_unfreezes_the_last_feature_info_stages(backbone: str, blocks: int, trainable: set[str]) -> None:
    model = ImageClassifier(num_classes=3, in_channels=3, backbone=backbone, strategy="fine_tuning",
                            fine_tune_blocks=blocks)
    model.apply_strategy()
    unfrozen = {".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.split(".")[0]
                for name, p in model.net.backbone.named_parameters() if p.requires_grad}
    assert unfrozen == trainable
    assert all(p.requires_grad for p in model.net.head.parameters())
    with pytest.raises(ValueError, match=r"between 0 and 5 \(the stages of timm:resnet10t\)"):
        ImageClassifier(num_classes=3, backbone="timm:resnet10t", strategy="fine_tuning", fine_tune_blocks=6)


@pytest.mark.parametrize("backbone", ["timm:resnet10t", "timm:mobilenetv3_small_050"])
def test_the_bundle_rebuilds_a_timm_network_and_its_inference_copy_answers_the_same(backbone: str) -> None:
    model = ImageClassifier(num_classes=3, in_channels=3, backbone=backbone, strategy="full")
    with torch.no_grad():  # BatchNorm statistics and affine terms away from their identity initial values
        for module in model.net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.5, 0.5)
    config = model.architecture
    assert config["backbone"] == backbone and config["embedding_dim"] == model.net.embedding_dim
    rebuilt = build_network(config)
    rebuilt.load_state_dict(model.net.state_dict())
    rebuilt.eval()
    fast = inference_network(rebuilt)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model.net.eval()(images)
        torch.testing.assert_close(rebuilt(images), reference)
        torch.testing.assert_close(fast(images.contiguous(memory_format=torch.channels_last)), reference,
                                   rtol=1e-4, atol=1e-5)
        assert fast.embedding(images).shape == (3, config["embedding_dim"])


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A timm resnet10t's own state_dict (its 1000-class classifier included), as .safetensors and as .pth."""
    import timm

    torch.manual_seed(3)
    state = timm.create_model("resnet10t", num_classes=1000).state_dict()
    folder = tmp_path_factory.mktemp("weights")
    save_file(state, str(folder / "resnet10t.safetensors"))
    torch.save(state, folder / "resnet10t.pth")
    return {"safetensors": folder / "resnet10t.safetensors", "pth": folder / "resnet10t.pth"}


@pytest.mark.parametrize("kind", ["safetensors", "pth"])
@pytest.mark.parametrize("channels", [3, 1])
def test_a_local_weights_file_loads_into_the_backbone(
    resnet_weights: dict[str, Path], kind: str, channels: int
) -> None:
    source = torch.load(resnet_weights["pth"], weights_only=True)
    network = TimmNetwork("timm:resnet10t", num_classes=4, in_channels=channels, dropout=0.0)
    head = _snapshot(network.head)
    file = resnet_weights[kind]
    assert load_pretrained(network, file.name, file.parent) == len(network.backbone.state_dict())
    loaded = network.backbone.state_dict()
    assert torch.equal(loaded["layer4.0.conv2.weight"], source["layer4.0.conv2.weight"])
    assert torch.equal(loaded["layer1.0.bn1.running_var"], source["layer1.0.bn1.running_var"])
    first = source["conv1.0.weight"]  # a gray network gets the RGB filters summed, as timm adapts them
    expected = first if channels == 3 else first.sum(dim=1, keepdim=True)
    torch.testing.assert_close(loaded["conv1.0.weight"], expected)
    assert all(torch.equal(head[k], v) for k, v in network.head.state_dict().items())  # the classifier is new


class NotWeights:
    """Anything pickled beside tensors: loading it would mean running code."""

    def __init__(self) -> None:
        self.payload = "not a tensor"


def test_a_pickle_of_objects_and_weights_of_another_network_are_refused(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    network = TimmNetwork("timm:resnet10t", num_classes=4, in_channels=3, dropout=0.0)
    before = _snapshot(network)
    pickled = tmp_path / "model.pth"
    torch.save({"state_dict": network.state_dict(), "extra": NotWeights()}, pickled)
    with pytest.raises(ValueError, match="pickle of more than weights; refused"):
        load_pretrained(network, "model.pth", tmp_path)
    other = TimmNetwork("timm:mobilenetv3_small_050", num_classes=4, in_channels=3, dropout=0.0)
    with pytest.raises(ValueError, match=r"does not fit timm:mobilenetv3_small_050: \d+ of \d+ backbone tensors"):
        load_pretrained(other, str(resnet_weights["safetensors"]), tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_pretrained(network, "missing.safetensors", tmp_path)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


@pytest.mark.parametrize("backbone", ["timm:resnet10t", "small_cnn"])
def test_a_visionloop_model_saves_weights_another_one_starts_from(tmp_path: Path, backbone: str) -> None:
    def network(classes: int) -> torch.nn.Module:
        return build_network({"backbone": backbone, "num_classes": classes, "in_channels": 1, "widths": [4, 8],
                              "embedding_dim": 8, "dropout": 0.0})

    trained = network(2)
    torch.save(trained.state_dict(), tmp_path / "pretext.pt")  # the bundle's state_dict.pt: head keys included
    fresh = network(5)
    head = _snapshot(fresh.head)
    load_pretrained(fresh, "pretext.pt", tmp_path)
    transferred = {k: v for k, v in fresh.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in transferred.items())
    assert all(torch.equal(head[k], v) for k, v in fresh.head.state_dict().items()) and fresh.head.out_features == 5


def test_small_cnn_inference_never_imports_timm() -> None:
    code = ("import sys, torch; from visionloop.models.network import build_network, inference_network; "
            "net = build_network({'num_classes': 3, 'in_channels': 1, 'widths': [4], 'embedding_dim': 8, "
            "'dropout': 0.0}); inference_network(net)(torch.zeros(1, 1, 16, 16)); print('timm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
