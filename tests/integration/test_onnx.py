"""ONNX export and the ONNX Runtime runtime: parity with PyTorch, the CLI, REST and batch on ``runtime: onnx``.

The models are the session's digits CNN (``digits``) and the session's registered champion
(``trained_settings``); the exporter, ONNX Runtime, MLflow and the server are the real ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from helpers.images import png
from helpers.models import DigitsCNN, save_bundle, tiny_model
from helpers.project import REPO
from helpers.server import serve, wait_for
from PIL import Image

from visionloop.batch.model import load_model
from visionloop.batch.predict import BatchOptions, predict_batch
from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.models.bundle import ServableModel
from visionloop.models.network import build_network
from visionloop.models.onnx_bundle import export_bundle
from visionloop.models.onnx_export import export_network
from visionloop.models.onnx_runtime import OnnxModel
from visionloop.serving.app import create_app
from visionloop.serving.sources import LocalBundleSource
from visionloop.store.predlog import PredictionLog

CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory: pytest.TempPathFactory, digits: DigitsCNN) -> Path:
    """The digits CNN as a bundle with a gate set (``test_set``) of 120 held-out digits, as training writes it."""
    bundle = shutil.copytree(digits.bundle, tmp_path_factory.mktemp("gated") / "bundle-dir")
    test_dir = bundle / BUNDLE_FILES["test_set"]
    test_dir.mkdir(parents=True)
    names = []
    for i in range(120):
        names.append(f"{i:05d}.png")
        Image.fromarray(digits.images[i]).save(test_dir / names[-1])
    pd.DataFrame({"path": names, "label": [str(t) for t in digits.labels[:120]]}).to_csv(
        test_dir / "manifest.csv", index=False
    )
    return bundle


def test_export_parity_fp32_and_int8_on_the_digits_cnn(tmp_path: Path, digits: DigitsCNN) -> None:
    model = ServableModel.from_dir(digits.bundle)
    result = export_bundle(model, digits.images, tmp_path, int8=True)
    assert result.parity.n_images == len(digits.images)
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.top1_agreement == 1.0
    assert result.int8 is not None and result.int8_parity is not None
    assert result.int8_parity.top1_agreement >= 0.99
    graph = onnx.load(str(result.int8)).graph  # int8 weights and quantized activations, not a float copy
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert any(tensor.data_type == onnx.TensorProto.INT8 for tensor in graph.initializer)
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["fp32"]["max_abs_diff"] == result.parity.max_abs_diff and report["int8"]["n_images"] == 297
    spec = json.loads((tmp_path / "preprocessing.json").read_text())
    assert spec["classes"] == CLASSES and spec["channels"] == 1 and spec["input"]["shape"] == ["batch", 1, 32, 32]
    onnx_model = OnnxModel.from_servable(model, result.onnx)
    for n in (1, 3, 40):  # the batch axis is dynamic
        ours, theirs = onnx_model.predict(digits.images[:n]), model.predict(digits.images[:n])
        np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-4)
        np.testing.assert_allclose(ours.embeddings, theirs.embeddings, atol=1e-4)


def test_any_network_with_the_embedding_and_head_interface_exports(tmp_path: Path) -> None:
    """A three-channel small CNN, and a timm backbone (``timm:resnet10t``, random weights) where timm imports."""
    networks = {"rgb-cnn": (tiny_model(["a", "b", "c"], channels=3).network, 32)}
    try:
        import timm  # noqa: F401
    except ImportError:
        pass
    else:
        config = {"backbone": "timm:resnet10t", "num_classes": 3, "in_channels": 3, "dropout": 0.0}
        networks["timm:resnet10t"] = (build_network(config).eval(), 64)
    for name, (network, size) in networks.items():
        torch.manual_seed(0)
        x = torch.rand(5, 3, size, size)
        export_network(network, x[:2], tmp_path / f"{name}.onnx")
        model = OnnxModel.from_servable(
            ServableModel(network, tiny_model(["a"]).eval_transform_json, ["a", "b", "c"], {"in_channels": 3}),
            tmp_path / f"{name}.onnx",
        )
        with torch.inference_mode():
            embeddings = network.embedding(x)
            expected = torch.softmax(network.head(embeddings), dim=1).numpy()
        got = model.predict_tensor(x)
        np.testing.assert_allclose(got.probabilities, expected, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(got.embeddings, embeddings.numpy(), atol=1e-3, err_msg=name)


def test_export_cli_on_a_bundle_needs_no_mlflow(
    tmp_path: Path, gated_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from visionloop.cli.main import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: any MLflow call would fail
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(gated_bundle), "--format", "onnx", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "fp32 max_abs_diff" in result.output and "on 120 images" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "parity.json", "preprocessing.json"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["fp32"]["n_images"] == 120 and parity["fp32"]["max_abs_diff"] <= 1e-4
    assert "test_set" in parity["measured_on"] and parity["model"]["version"] == "local"
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nowhere"), "--output", str(out)])
    assert missing.exit_code == 2 and "neither a models:/ URI nor a bundle folder" in missing.output


def test_rest_on_onnx_answers_like_torch_logs_and_hot_swaps(
    tmp_path: Path, digits: DigitsCNN, gated_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    monkeypatch.setenv("VISIONLOOP_DB_URL", db_url)
    monkeypatch.setenv("VISIONLOOP_STATE_DIR", str(tmp_path / "state"))
    settings = Settings.load(REPO, overrides={"serving": {"runtime": "onnx", "poll_seconds": 0.05,
                                                          "image_dir": str(tmp_path / "images")}})
    always_seven = save_bundle(tiny_model(CLASSES, always=7), tmp_path / "v2")
    sources = {"1": LocalBundleSource(gated_bundle, "digits", "1", settings=settings),
               "2": LocalBundleSource(always_seven, "digits", "2", settings=settings)}

    class Alias:  # the registry's alias, moved by the test
        current = "1"

        def current_version(self) -> str:
            return self.current

        def load(self, version: str) -> ServableModel:
            return sources[version].load(version)

    alias = Alias()
    app = create_app(settings, alias)
    images = digits.images[:24]
    expected = [CLASSES[i] for i in ServableModel.from_dir(gated_bundle).predict(images).labels_idx]
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert isinstance(app.state.manager.current(), OnnxModel)
        files = [("files", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
        answers = [a for start in range(0, 24, 8)
                   for a in client.post("/predict", files=files[start : start + 8]).json()["predictions"]]
        assert [a["label"] for a in answers] == expected
        wait_for(lambda: client.get("/health").json()["log"]["queued"] == 0, "the log writer")
        alias.current = "2"  # hot swap to another version, also on ONNX Runtime
        wait_for(lambda: client.get("/model").json()["version"] == "2", "the swap to version 2")
        swapped = client.post("/predict", files=files[:4]).json()["predictions"]
        assert [a["label"] for a in swapped] == ["7"] * 4 and {a["model_version"] for a in swapped} == {"2"}
        assert isinstance(app.state.manager.current(), OnnxModel)
        wait_for(lambda: client.get("/health").json()["log"]["queued"] == 0, "the log writer")
    log = PredictionLog(db_url)
    try:
        window = log.read_window(last_n=100)
    finally:
        log.dispose()
    assert sorted(window["id"]) == sorted(a["prediction_id"] for a in answers + swapped)
    assert (window["source"] == "rest").all()
    assert window.loc[window["model_version"] == "1", "emb_0"].notna().all()  # v1's drift reduction, v2 has none
    assert sorted(window["model_version"].value_counts().items()) == [("1", 24), ("2", 4)]
    # a bundle without model.onnx was exported once, into the state dir's model cache
    assert len(list((tmp_path / "state" / "models" / ".onnx").glob("*/model.onnx"))) == 2


def test_batch_on_onnx_gives_the_labels_of_torch(
    tmp_path: Path, digits: DigitsCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONLOOP_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "in"
    source.mkdir()
    for i in range(60):
        Image.fromarray(digits.images[i]).save(source / f"{i:03d}.png")
    outputs = {}
    for runtime in ("torch", "onnx"):
        settings = Settings.load(REPO, overrides={"batch": {"runtime": runtime}})
        model = load_model(settings, bundle=digits.bundle)
        assert isinstance(model, OnnxModel) == (runtime == "onnx")
        predict_batch(model, source, tmp_path / f"{runtime}.parquet", BatchOptions.from_params(settings.params),
                      progress=False)
        outputs[runtime] = pd.read_parquet(tmp_path / f"{runtime}.parquet").sort_values("path")
    assert list(outputs["onnx"]["label"]) == list(outputs["torch"]["label"])
    probabilities = [f"prob_{c}" for c in CLASSES]
    np.testing.assert_allclose(outputs["onnx"][probabilities], outputs["torch"][probabilities], atol=1e-4)


def test_registration_stores_the_onnx_export_and_serving_loads_it(trained_settings: Settings) -> None:
    from visionloop.models.cache import version_dir
    from visionloop.models.registry import model_version
    from visionloop.models.tracking import client
    from visionloop.serving.sources import registry_model_source

    registered = model_version(trained_settings, "1")
    stored = {Path(a.path).name for a in client(trained_settings).list_artifacts(registered.run_id, "bundle")}
    assert {"model.onnx", "onnx_parity.json"} <= stored
    directory = version_dir(trained_settings, registered)
    parity = json.loads((directory / BUNDLE_FILES["onnx_parity"]).read_text())
    assert parity["fp32"]["max_abs_diff"] <= 1e-4 and parity["fp32"]["n_images"] > 0
    settings = trained_settings.with_overrides({"serving": {"runtime": "onnx"}})
    model = registry_model_source(settings).load("1")
    assert isinstance(model, OnnxModel) and model.onnx_path == directory / BUNDLE_FILES["onnx"]
    torch_model = registry_model_source(trained_settings).load("1")
    assert type(torch_model) is ServableModel
    sample = [np.asarray(Image.open(p)) for p in sorted((directory / BUNDLE_FILES["test_set"]).glob("*.png"))[:16]]
    np.testing.assert_allclose(model.predict(sample).probabilities, torch_model.predict(sample).probabilities,
                               atol=1e-4)
