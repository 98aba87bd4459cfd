"""The real server (uvicorn on a free loopback port) over a small CNN trained on real digits.

The model source is an in-memory stand-in for the registry: versions are bundle folders written by
the session fixture, and tests move ``current`` the way promotion moves the champion alias.
"""

from __future__ import annotations

import base64
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.images import png
from helpers.models import DigitsCNN
from helpers.project import REPO
from helpers.server import serve, wait_for
from PIL import Image

from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.serving.app import create_app
from visionloop.store.predlog import PredictionLog

CLASSES = [str(d) for d in range(10)]
LINEAGE = {"git_commit": "abc123", "data_version": "d41d8.dir", "params_hash": "p1", "run_id": "r1"}

# --- versions "1" and "2": copies of the session's digits CNN (``digits``, integration conftest) -----------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, digits: DigitsCNN) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {version: shutil.copytree(digits.bundle, root / f"v{version}") for version in ("1", "2")}


class BundleSource:
    """The ``model_source`` seam over bundle folders (or loader functions); ``current`` is the alias."""

    def __init__(self, versions: dict[str, Path | Callable[[], ServableModel]], current: str | None) -> None:
        self.versions = versions
        self.current = current

    def current_version(self) -> str | None:
        return self.current

    def load(self, version: str) -> ServableModel:
        spec = self.versions[version]
        if callable(spec):
            return spec()
        return ServableModel.from_dir(
            spec, name="digits-cnn", version=version, tags=dict(LINEAGE), aliases=["champion"]
        )


# --- running the server ------------------------------------------------------------------------------


@dataclass
class Setup:
    """Settings plus the service locations that ``Settings`` reads from the environment."""

    settings: Settings
    db_url: str
    state_dir: Path


def make_settings(tmp: Path, db_url: str | None = None, **serving: Any) -> Setup:
    overrides = {
        "serving": {
            "poll_seconds": 0.05,
            "image_dir": str(tmp / "images"),
            "max_payload_bytes": 300_000,
            "max_pixels": 10_000,
            "max_images": 8,
            **serving,
        }
    }
    return Setup(
        Settings.load(REPO, overrides=overrides), db_url or f"sqlite:///{tmp / 'predictions.db'}", tmp / "state"
    )


@contextmanager
def running(setup: Setup, source: BundleSource, wait_ready: bool = True) -> Iterator[str]:
    """Start uvicorn on a free loopback port in a thread; yield its base URL."""
    with pytest.MonkeyPatch.context() as env:  # create_app reads the locations once
        env.setenv("VISIONLOOP_DB_URL", setup.db_url)
        env.setenv("VISIONLOOP_STATE_DIR", str(setup.state_dir))
        env.delenv("VISIONLOOP_TOKEN", raising=False)
        app = create_app(setup.settings, source)
    with serve(app, wait_ready) as url:
        yield url


def upload(*images: bytes | tuple[str, bytes, str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` parts; a bare ``bytes`` is sent as a PNG named by its position."""
    return [
        ("files", item if isinstance(item, tuple) else (f"{i}.png", item, "image/png")) for i, item in enumerate(images)
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Path]) -> Iterator[tuple[str, Setup]]:
    """One server following version "1" for the tests that do not move the alias."""
    setup = make_settings(tmp_path_factory.mktemp("served"))
    with running(setup, BundleSource(dict(bundles), current="1")) as url:
        yield url, setup


# --- the tests --------------------------------------------------------------------------------------


def test_correct_labels_on_real_digit_images(served: tuple[str, Setup], digits: DigitsCNN) -> None:
    url, _setup = served
    images, targets = digits.images, digits.labels
    held_out = list(range(0, len(images), 9))[:32]
    answers = []
    with httpx.Client(base_url=url) as client:
        for i in held_out[:8]:  # one image per request
            response = client.post("/predict", files=upload(png(images[i])))
            assert response.status_code == 200, response.text
            answers += response.json()["predictions"]
        for start in range(8, 32, 8):  # several images per request
            chunk = held_out[start : start + 8]
            response = client.post("/predict", files=upload(*(png(images[i]) for i in chunk)))
            assert response.status_code == 200, response.text
            answers += response.json()["predictions"]
        encoded = [base64.b64encode(png(images[i])).decode() for i in held_out[:3]]
        encoded[1] = "data:image/png;base64," + encoded[1]
        as_json = client.post("/predict", json={"images": encoded}).json()["predictions"]

    labels = [a["label"] for a in answers]
    accuracy = np.mean([label == str(targets[i]) for label, i in zip(labels, held_out, strict=True)])
    assert accuracy >= 0.85, f"{accuracy=} {labels=}"
    assert [a["label"] for a in as_json] == labels[:3]
    for answer in answers:
        assert answer["model_version"] == "1" and answer["model_name"] == "digits-cnn"
        assert answer["error"] is None
        assert set(answer["probabilities"]) == set(CLASSES)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert answer["confidence"] == pytest.approx(answer["probabilities"][answer["label"]])
        uuid.UUID(answer["prediction_id"])
    assert [a["index"] for a in answers[8:16]] == list(range(8))


def test_predictions_and_feedback_are_logged(served: tuple[str, Setup], digits: DigitsCNN) -> None:
    url, setup = served
    images, targets = digits.images, digits.labels
    with httpx.Client(base_url=url) as client:
        answers = client.post("/predict", files=upload(*(png(images[i]) for i in range(100, 104)))).json()
        ids = [a["prediction_id"] for a in answers["predictions"]]
        # feedback right away: the row may still be in the writer's queue
        first = client.post("/feedback", json={"prediction_id": ids[0], "label": str(targets[100])})
        assert first.status_code == 200, first.text
        assert first.json() == {"prediction_id": ids[0], "label": str(targets[100]), "stored": True}
        unknown = client.post("/feedback", json={"prediction_id": str(uuid.uuid4()), "label": "3"})
        assert unknown.status_code == 404 and "no prediction" in unknown.json()["detail"]
        bad_label = client.post("/feedback", json={"prediction_id": ids[1], "label": "eleven"})
        assert bad_label.status_code == 422 and "not one of the model's classes" in bad_label.json()["detail"]
        wait_for(lambda: client.get("/health").json()["log"]["queued"] == 0, "the log writer")
        health = client.get("/health").json()
    assert health["prediction_log"] == "ok" and health["log"]["failed"] == 0

    log = PredictionLog(setup.db_url)
    try:
        stored = log.get(ids[0])
        assert stored.feedback_label == str(targets[100]) and stored.model_version == "1"
        assert log.get(ids[1]).feedback_label is None
        window = log.read_window(last_n=4)
        assert sorted(window["id"]) == sorted(ids)
        for column in ("brightness", "contrast", "sharpness", "entropy", "emb_0", "emb_3", "prob_9"):
            assert window[column].notna().all(), column
        assert (window["source"] == "rest").all()
        for _, row in window.iterrows():  # the input, kept for labeling and retraining
            path = Path(row["image_path"])
            image_dir = Path(setup.settings.params.serving.image_dir)
            assert path.name == f"{row['id']}.png" and path.is_relative_to(image_dir)
            assert np.array(Image.open(path)).shape == (32, 32)
        assert list(log.labeled()["id"]) == [ids[0]]
    finally:
        log.dispose()


MULTIPART_X = "multipart/form-data; boundary=x"


def test_bad_inputs_get_a_4xx_json_reason_and_the_server_keeps_serving(
    served: tuple[str, Setup], digits: DigitsCNN
) -> None:
    url, _setup = served
    images = digits.images
    good = png(images[200])
    noise = np.random.default_rng(0).integers(0, 256, 400_000, dtype=np.uint8).tobytes()
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        ("not an image", {"files": upload(("notes.txt", b"hello, world", "text/plain"))}, 422, "not_an_image"),
        ("truncated png", {"files": upload(good[: len(good) // 2])}, 422, "corrupt"),
        ("empty file", {"files": upload(b"")}, 422, "empty"),
        ("too many pixels", {"files": upload(png(np.zeros((120, 120), np.uint8)))}, 413, "too_large"),
        ("too small", {"files": upload(png(np.zeros((4, 4), np.uint8)))}, 422, "too_small"),
        ("too large payload", {"files": upload(noise)}, 413, None),
        ("too many images", {"files": upload(*[good] * 9)}, 413, None),
        ("empty body", {"headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, None),
        ("no file part", {"data": {"note": "hi"}, "files": [("other", ("", b"", ""))]}, 400, None),
        ("no boundary", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400, None),
        ("malformed multipart", {"content": b"--x\r\nno headers end", "headers": {"content-type": MULTIPART_X}}, 400,
         None),
        ("wrong content type", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, None),
        ("bad json", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
        ("json without images", {"json": {"pictures": []}}, 400, None),
        ("bad base64", {"json": {"images": ["!!not base64!!"]}}, 422, "bad_base64"),
    ]
    with httpx.Client(base_url=url) as client:
        for name, request, status, code in cases:
            response = client.post("/predict", **request)
            assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
            body = response.json()
            assert isinstance(body["detail"], str) and body["detail"], name
            if code is not None:
                assert body["errors"][0]["error_code"] == code, f"{name}: {body}"
            after = client.post("/predict", files=upload(good))
            assert after.status_code == 200, f"after {name}: {after.text}"

        mixed = client.post("/predict", files=upload(good, good[: len(good) // 2], png(images[201])))
        assert mixed.status_code == 200
        entries = mixed.json()["predictions"]
        assert [e["error_code"] for e in entries] == [None, "corrupt", None]
        assert entries[1]["prediction_id"] is None and entries[1]["label"] is None
        assert entries[0]["label"] and entries[2]["label"]
        assert client.get("/health").json()["status"] == "ok"


def test_model_ready_health_and_docs(served: tuple[str, Setup]) -> None:
    url, _setup = served
    with httpx.Client(base_url=url) as client:
        assert client.get("/ready").json() == {"ready": True, "model_version": "1", "detail": None}
        model = client.get("/model").json()
        assert model["name"] == "digits-cnn" and model["version"] == "1" and model["aliases"] == ["champion"]
        assert model["lineage"] == LINEAGE and model["classes"] == CLASSES
        names = [t["__class_fullname__"] for t in model["preprocessing"]["transform"]["transforms"]]
        assert any("Resize" in n for n in names) and any("Normalize" in n for n in names)
        health = client.get("/health").json()
        assert health["model_loaded"] and health["last_reload_error"] is None
        assert client.get("/docs").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "predict" in page.text
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    ours = set(schemas) - {"HTTPValidationError", "ValidationError"}  # FastAPI's own
    assert {"ImagePrediction", "PredictResponse", "FeedbackRequest", "ModelInfo", "HealthResponse"} <= ours
    for name in ours:
        undocumented = [p for p, s in schemas[name].get("properties", {}).items() if not s.get("description")]
        assert not undocumented, (name, undocumented)
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert "security" not in spec["paths"]["/predict"]["post"]  # no token configured: none asked for


def test_moving_the_alias_under_concurrent_load_fails_no_request(
    tmp_path: Path, bundles: dict[str, Path], digits: DigitsCNN
) -> None:
    """8 client threads stream requests; the alias moves after 40; they go on until version 2 answered 40."""
    images = digits.images
    bodies = [png(images[i]) for i in range(8)]
    source = BundleSource(dict(bundles), current="1")
    threads = 8
    seen: dict[int, list[str]] = {t: [] for t in range(threads)}
    failures: list[str] = []
    stop = threading.Event()

    def client_thread(t: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = client.post("/predict", files=upload(bodies[(t + n) % len(bodies)]))
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                seen[t].append(response.json()["predictions"][0]["model_version"])

    def answered(version: str | None = None) -> int:
        return sum(1 for sequence in seen.values() for v in sequence if version in (None, v))

    with running(make_settings(tmp_path), source) as url:
        workers = [threading.Thread(target=client_thread, args=(t, url)) for t in range(threads)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: answered() >= 40, "the first requests")
            source.current = "2"  # promotion moves the alias mid-stream
            wait_for(lambda: answered() >= 200 and answered("2") >= 40, "200 answers, 40 of them by version 2")
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
        with httpx.Client(base_url=url) as client:
            after = client.post("/predict", files=upload(bodies[0])).json()["predictions"][0]
            health = client.get("/health").json()

    assert failures == []
    assert answered("1") >= 40 and answered("1") + answered("2") == answered()
    for t, sequence in seen.items():  # the swap is atomic: once a client saw "2" it never sees "1" again
        assert sequence == sorted(sequence), (t, sequence)
    assert after["model_version"] == "2"
    assert health["reloads"] == 2 and health["last_reload_error"] is None
    assert health["largest_batch"] > 1  # concurrent requests shared forward passes


def test_a_failing_new_version_keeps_the_old_one_serving(
    tmp_path: Path, bundles: dict[str, Path], digits: DigitsCNN
) -> None:
    images, targets = digits.images, digits.labels

    def wrong_classes() -> ServableModel:
        model = BundleSource(bundles, None).load("1")
        model.version, model.classes = "3", ["cat", "dog"]  # 10 outputs for 2 classes
        return model

    def unloadable() -> ServableModel:
        raise OSError("artifact store unreachable")

    source = BundleSource({**bundles, "3": wrong_classes, "4": unloadable}, current="1")
    body = upload(png(images[250]))
    with running(make_settings(tmp_path), source) as url, httpx.Client(base_url=url) as client:
        for bad, message in (("3", "ModelCheckFailed"), ("4", "artifact store unreachable")):
            source.current = bad
            wait_for(
                lambda bad=bad: (client.get("/health").json()["last_reload_error"] or {}).get("version") == bad,
                f"version {bad} to fail",
            )
            error = client.get("/health").json()["last_reload_error"]
            assert message in error["error"] and error["still_serving"] == "1"
            answer = client.post("/predict", files=body)
            assert answer.status_code == 200
            assert answer.json()["predictions"][0]["model_version"] == "1"
            assert answer.json()["predictions"][0]["label"] == str(targets[250])
            assert client.get("/model").json()["version"] == "1"
        source.current = "2"  # a good version afterwards is taken, and the error cleared
        wait_for(lambda: client.get("/health").json()["model_version"] == "2", "version 2")
        assert client.get("/health").json()["last_reload_error"] is None


def test_an_unavailable_prediction_log_does_not_stop_answers(
    tmp_path: Path, bundles: dict[str, Path], digits: DigitsCNN
) -> None:
    images = digits.images
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("the database folder is a file: sqlite cannot open it")
    setup = make_settings(tmp_path, db_url=f"sqlite:///{blocker / 'predictions.db'}")
    with running(setup, BundleSource(bundles, current="1")) as url, httpx.Client(base_url=url) as client:
        for _ in range(3):
            response = client.post("/predict", files=upload(png(images[260]), png(images[261])))
            assert response.status_code == 200
            assert all(p["label"] for p in response.json()["predictions"])
        wait_for(lambda: client.get("/health").json()["log"]["failed"] >= 6, "the failed writes to be counted")
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["prediction_log"] == "unavailable" and health.json()["log"]["last_error"]
        feedback = client.post("/feedback", json={"prediction_id": str(uuid.uuid4()), "label": "1"})
        assert feedback.status_code == 503 and "unavailable" in feedback.json()["detail"]
        assert client.post("/predict", files=upload(png(images[262]))).status_code == 200


def test_bearer_token_guards_predict_and_feedback(tmp_path: Path, bundles: dict[str, Path], digits: DigitsCNN) -> None:
    images = digits.images
    setup = make_settings(tmp_path, token="s3cret")
    with running(setup, BundleSource(bundles, current="1")) as url, httpx.Client(base_url=url) as client:
        body = upload(png(images[270]))
        missing = client.post("/predict", files=body)
        assert missing.status_code == 401 and missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.post("/predict", files=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = client.post("/predict", files=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        prediction_id = ok.json()["predictions"][0]["prediction_id"]
        assert client.post("/feedback", json={"prediction_id": prediction_id, "label": "1"}).status_code == 401
        assert (
            client.post(
                "/feedback",
                json={"prediction_id": prediction_id, "label": "1"},
                headers={"Authorization": "Bearer s3cret"},
            ).status_code
            == 200
        )
        assert client.get("/health").status_code == 200
        predict_doc = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
        assert predict_doc["security"] == [{"HTTPBearer": []}]  # /docs says the token is required


def test_not_ready_until_a_model_is_loaded(tmp_path: Path, bundles: dict[str, Path], digits: DigitsCNN) -> None:
    images = digits.images
    source = BundleSource(bundles, current=None)  # no champion yet
    with running(make_settings(tmp_path), source, wait_ready=False) as url, httpx.Client(base_url=url) as client:
        assert client.get("/health").json()["model_loaded"] is False
        assert client.get("/ready").status_code == 503
        refused = client.post("/predict", files=upload(png(images[280])))
        assert refused.status_code == 503 and "no model" in refused.json()["detail"]
        assert client.get("/model").status_code == 503
        source.current = "1"
        wait_for(lambda: client.get("/ready").status_code == 200, "readiness")
        assert client.post("/predict", files=upload(png(images[280]))).status_code == 200
