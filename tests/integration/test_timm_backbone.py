"""A timm backbone through the loop: pretrained from a local file, trained, registered, served, retrained.

One tiny project (``timm:resnet10t`` on 60 real 32×32 gray digits of 3 classes, 1 epoch) with the real
pipeline steps, MLflow registry and REST app. Its backbone starts from a weights file the test saves from a
timm model (RGB, 1000 classes: the route of a user's own pretrained network), so nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from fastapi.testclient import TestClient
from helpers.images import png
from helpers.models import digit_images
from helpers.project import create_project
from helpers.server import wait_for
from PIL import Image
from safetensors.torch import save_file

from visionloop.config import Settings
from visionloop.models.cache import load_registered
from visionloop.serving.app import create_app
from visionloop.serving.sources import RegistryModelSource
from visionloop.training import pipeline
from visionloop.training.train import train

CLASSES = ["0", "1", "2"]
PER_CLASS = 20


@dataclass(frozen=True)
class TimmProject:
    settings: Settings
    pretrained: dict[str, torch.Tensor]  # the weights file's tensors


@pytest.fixture(scope="module")
def timm_project(tmp_path_factory: pytest.TempPathFactory) -> TimmProject:
    import timm

    root = tmp_path_factory.mktemp("timm") / "project"
    torch.manual_seed(0)
    pretrained = timm.create_model("resnet10t", num_classes=1000).state_dict()
    create_project(root, {
        "model": {"backbone": "timm:resnet10t", "pretrained": "weights/resnet10t.safetensors"},
        "train": {"epochs": 1, "batch_size": 16, "strategy": "feature_extraction", "fine_tune_blocks": 1},
        "registry": {"min_quality": {"metric": "accuracy", "threshold": 0.0}},
        "serving": {"log_writer": "thread", "poll_seconds": 0.05},
    })
    (root / "weights").mkdir()
    save_file(pretrained, str(root / "weights" / "resnet10t.safetensors"))
    images, targets = digit_images()
    for label in CLASSES:
        folder = root / "data" / "raw" / label
        folder.mkdir(parents=True)
        for i in [i for i, t in enumerate(targets) if str(t) == label][:PER_CLASS]:
            Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    settings = Settings.load(root)
    pipeline.prepare_step(settings)
    pipeline.train_step(settings, trigger="test")
    pipeline.evaluate_step(settings)
    assert pipeline.register_step(settings, trigger="test")["aliases"] == ["champion"]
    return TimmProject(settings, pretrained)


def test_the_champion_is_the_pretrained_backbone_with_a_trained_head(timm_project: TimmProject) -> None:
    settings = timm_project.settings
    champion = load_registered(settings, f"models:/{settings.model_name}@champion")
    assert champion.config == {"backbone": "timm:resnet10t", "num_classes": 3, "in_channels": 1,
                               "embedding_dim": 512, "dropout": settings.params.model.dropout,
                               "pretrained": "weights/resnet10t.safetensors"}
    backbone = champion.network.backbone.state_dict()
    source = timm_project.pretrained
    # feature_extraction: weights and BatchNorm statistics exactly the file's (the RGB stem summed to gray)
    assert all(torch.equal(backbone[k], source[k]) for k in backbone if k != "conv1.0.weight")
    torch.testing.assert_close(backbone["conv1.0.weight"], source["conv1.0.weight"].sum(dim=1, keepdim=True))
    assert champion.classes == CLASSES and champion.reduction is not None


def test_the_rest_app_serves_the_timm_champion(timm_project: TimmProject) -> None:
    settings = timm_project.settings
    images, targets = digit_images()
    picks = [i for i, t in enumerate(targets) if str(t) in CLASSES][-6:]  # not among the training images
    files = [("files", (f"{i}.png", png(images[i]), "image/png")) for i in picks]
    with TestClient(create_app(settings, RegistryModelSource(settings)), base_url="http://127.0.0.1") as client:
        wait_for(lambda: client.get("/ready").status_code == 200, "the timm champion to load", timeout=120)
        answer = client.post("/predict", files=files)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert len(predictions) == 6 and {p["label"] for p in predictions} <= set(CLASSES)
        assert {p["model_version"] for p in predictions} == {"1"}
        refused = client.post("/predict", files=[("files", ("x.png", b"not an image", "image/png"))])
        assert refused.status_code == 422 and "could not be read" in refused.text


def test_retraining_from_the_timm_champion_fine_tunes_its_last_stage(timm_project: TimmProject) -> None:
    settings = timm_project.settings
    champion = load_registered(settings, f"models:/{settings.model_name}@champion")
    result = train(settings, base=f"models:/{settings.model_name}@champion", strategy="fine_tuning",
                   out_dir=settings.path("models-retrained"), trigger="test")
    config = json.loads((result.bundle_dir / "bundle" / "model_config.json").read_text())
    assert config == champion.config
    before = dict(champion.network.named_parameters())
    after = torch.load(result.bundle_dir / "bundle" / "state_dict.pt", weights_only=True)
    changed = {name.removeprefix("backbone.").split(".")[0] for name, weight in before.items()
               if not torch.equal(weight, after[name])}
    assert changed == {"layer4", "head"}, f"fine_tuning (fine_tune_blocks 1) changed {changed}"
    pipeline.evaluate_step(settings, model_dir=result.bundle_dir)
    registered = pipeline.register_step(settings, trigger="test", model_dir=result.bundle_dir)
    assert registered["version"] == "2"
