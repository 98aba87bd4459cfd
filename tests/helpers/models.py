"""Real models without a training pipeline: a tiny untrained CNN, and a small CNN trained on real digits.

Both use the project's own network (``build_network``) and the repository's eval transform, so
what a test feeds them goes through the same code as in production; ``save_bundle`` writes one as
a bundle folder (``visionloop.contracts.BUNDLE_FILES``) for ``ServableModel.from_dir`` and ``--bundle``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from helpers.project import repo_params
from visionloop.contracts import BUNDLE_FILES
from visionloop.models.bundle import ServableModel
from visionloop.models.network import build_network
from visionloop.monitoring.features import fit_reduction
from visionloop.training.preprocess import build_pipeline, pipeline_to_json, to_tensor_batch

N_TRAIN = 1500  # the trained digits CNN learns from digits 0..1499; 1500.. are held out


def eval_transform_json() -> str:
    """The repository's eval pipeline (params.yaml ``augment.eval``) as serving stores it."""
    return pipeline_to_json(build_pipeline(repo_params()["augment"]["eval"]))


def tiny_model(
    classes: Sequence[str],
    version: str = "1",
    *,
    seed: int = 0,
    always: int | None = None,
    outputs: int | None = None,
    channels: int = 1,
) -> ServableModel:
    """A small untrained CNN: the real plumbing, meaningless answers.

    ``always`` sets the head so that every answer is that class index; ``outputs`` gives the
    network another number of output units than classes (a model that cannot be served); ``channels``
    is what it takes (1 grayscale, 3 RGB).
    """
    torch.manual_seed(seed)
    config = {"num_classes": outputs or len(classes), "in_channels": channels, "widths": [4, 8], "embedding_dim": 16,
              "dropout": 0.0}
    network = build_network(config)
    if always is not None:
        with torch.no_grad():
            network.head.weight.zero_()
            network.head.bias.fill_(-5.0)
            network.head.bias[always] = 5.0
    return ServableModel(network, eval_transform_json(), list(classes), config, name="digits", version=version)


def save_bundle(model: ServableModel, folder: Path) -> Path:
    """Write ``model`` as a bundle folder (its reduction too, if it has one); returns ``folder``."""
    files = {key: folder / relative for key, relative in BUNDLE_FILES.items()}
    files["state_dict"].parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.network.state_dict(), files["state_dict"])
    files["config"].write_text(json.dumps(model.config))
    files["eval_transform"].write_text(model.eval_transform_json)
    files["classes"].write_text(json.dumps(model.classes))
    if model.reduction is not None:
        files["embedding_reduction"].write_text(json.dumps(model.reduction))
    return folder


def digit_images() -> tuple[list[np.ndarray], np.ndarray]:
    """scikit-learn's real 8×8 digits as 32×32 uint8 images, the way ``import_digits`` writes them."""
    data = load_digits()
    scaled = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = [np.array(Image.fromarray(p).resize((32, 32), Image.Resampling.BICUBIC)) for p in scaled]
    return images, data.target


@dataclass(frozen=True)
class DigitsCNN:
    bundle: Path  # a bundle folder (bundle/state_dict.pt, ...): ServableModel.from_dir, `--bundle`
    images: list[np.ndarray]  # held-out 32×32 uint8 digits, never trained on
    labels: list[int]


def train_digits_cnn(folder: Path) -> DigitsCNN:
    """A small CNN trained for a few seconds on real digits (about 95 % held-out accuracy), with a 4-d reduction."""
    images, targets = digit_images()
    pipeline = build_pipeline(repo_params()["augment"]["eval"])
    x, y = to_tensor_batch(pipeline, images[:N_TRAIN]), torch.as_tensor(targets[:N_TRAIN])
    config = {"num_classes": 10, "in_channels": 1, "widths": [8, 16, 32], "embedding_dim": 32, "dropout": 0.0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores, 2 threads are many times slower under contention
    torch.manual_seed(0)
    network = build_network(config)
    optimizer = torch.optim.Adam(network.parameters(), lr=5e-3)
    epochs, batch = 6, 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 5e-3, total_steps=epochs * -(-N_TRAIN // batch))
    network.train()
    for _ in range(epochs):
        order = torch.randperm(N_TRAIN)
        for start in range(0, N_TRAIN, batch):
            index = order[start : start + batch]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(network(x[index]), y[index]).backward()
            optimizer.step()
            schedule.step()
    network.eval()
    with torch.inference_mode():
        reduction = fit_reduction(network.embedding(x[:400]).numpy(), 4)
        held_out = to_tensor_batch(pipeline, images[N_TRAIN:])
        accuracy = (network(held_out).argmax(1).numpy() == targets[N_TRAIN:]).mean()
    torch.set_num_threads(threads)
    assert accuracy > 0.85, f"the test model trained badly: held-out accuracy {accuracy:.3f}"
    model = ServableModel(network, pipeline_to_json(pipeline), [str(d) for d in range(10)], config, reduction=reduction)
    return DigitsCNN(save_bundle(model, folder), images[N_TRAIN:], [int(t) for t in targets[N_TRAIN:]])
