"""`visionloop init DIR --images SOURCE`: a ready project (git, DVC, params, pipeline) for one's own images."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.config import Settings
from visionloop.data.contours import write_contours
from visionloop.data.manifest import read_manifest
from visionloop.data.shapes import write_shapes
from visionloop.models.network import build_network
from visionloop.training import pipeline
from visionloop.training.datamodule import ImageDataModule, class_names
from visionloop.training.model import architecture_from_params

runner = CliRunner()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def init(project: Path, images: Path) -> str:
    result = runner.invoke(app, ["init", str(project), "--images", str(images)])
    assert result.exit_code == 0, result.output
    return result.output


def test_init_on_a_folder_of_rgb_photos_makes_a_project_where_prepare_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_shapes(tmp_path / "photos", 40, seed=5)
    first, second = sorted((tmp_path / "photos" / "circle").glob("*.jpg"))[:2]
    (first.parent / "sub").mkdir()
    second.rename(first.parent / "sub" / first.name)  # the same file name twice in one class: both kept
    project = tmp_path / "my shapes"
    output = init(project, tmp_path / "photos")
    assert "| `data.channels` | `3` |" in output and "HorizontalFlip" in output  # the report, printed
    assert (project / "reports" / "init.md").read_text() in output
    settings = Settings.load(project)
    assert settings.params.data.source == "data/images" and settings.params.data.channels == 3
    assert settings.params.augment.train[0] == {"Resize": {"height": 64, "width": 64}}
    assert settings.model_name == "my-shapes-cnn"
    assert "# peak learning rate" in (project / "params.yaml").read_text()  # the template's comments kept
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "train", "evaluate", "register"]
    assert not [d for s in stages.values() for d in s.get("deps", []) if d.startswith("src/")]
    assert (project / "data" / "images.dvc").is_file() and (project / ".dvc" / "config").is_file()
    assert git(project, "status", "--porcelain") == "" and git(project, "log", "--oneline").count("\n") == 1
    assert len(list((project / "data" / "images").rglob("*.jpg"))) == 40  # the top-level manifest.csv is no class
    assert (project / "data" / "images" / "circle" / "sub" / first.name).is_file()

    monkeypatch.chdir(project)
    result = runner.invoke(app, ["data", "prepare"])
    assert result.exit_code == 0, result.output
    prepared = read_manifest(project / "data" / "prepared")
    assert len(prepared) == 40 and set(prepared["label"]) == {"circle", "square", "star", "triangle"}


def test_init_on_a_manifest_keeps_its_columns_as_slices_and_its_params_feed_the_network(tmp_path: Path) -> None:
    write_contours(tmp_path / "elsewhere" / "contours", 40, seed=6)
    project = tmp_path / "contours"
    init(project, tmp_path / "elsewhere" / "contours" / "manifest.csv")
    settings = Settings.load(project)
    assert settings.params.data.source == "data/images/manifest.csv"
    assert settings.params.registry.gate.slices.metadata == ["background", "stroke", "gap", "blur", "quality",
                                                             "figure", "size"]
    pipeline.prepare_step(settings)
    prepared = read_manifest(project / "data" / "prepared")
    assert len(prepared) == 40 and {"stroke", "gap", "background"} <= set(prepared.columns)

    # the chosen augmentations and channels give the network what it takes (training itself: tests/e2e, README)
    classes = class_names(prepared)
    data = ImageDataModule(prepared, classes, settings.params.augment.train, settings.params.augment.eval,
                           batch_size=8)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (8, 3, 64, 64) and classes == ["closed", "open"]
    network = build_network(architecture_from_params(settings.params, len(classes)))
    assert network(images).shape == (8, 2)
    assert isinstance(network.embed[0], torch.nn.AdaptiveMaxPool2d)  # init's model.pooling reaches the network


def test_init_refuses_a_folder_that_is_not_empty_and_writes_nothing(tmp_path: Path) -> None:
    write_shapes(tmp_path / "photos", 4, seed=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["init", str(tmp_path / "busy"), "--images", str(tmp_path / "photos")])
    assert result.exit_code == 2 and "is not empty" in result.output
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
