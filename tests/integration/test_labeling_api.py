"""The labeling routes on their own (FastAPI TestClient): token, errors, and what each call stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers.project import repo_params
from helpers.records import CLASSES, record

from visionloop.config import Settings
from visionloop.labeling.queue import LabelQueue
from visionloop.labeling.rules import LabelingRules
from visionloop.labeling.scan import enqueue_frame
from visionloop.params import validate_params
from visionloop.serving.app import add_routes
from visionloop.serving.deps import open_log, serving_model
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import save_png

TOKEN = "s3cret"


@pytest.fixture
def setup(tmp_path: Path, plog: PredictionLog) -> dict[str, Any]:
    image = tmp_path / "img.png"
    save_png(np.arange(64, dtype=np.uint8).reshape(8, 8), image)
    records = [record(0.2, image_path=str(image)), record(0.3), record(0.4)]
    plog.write(records)
    params = repo_params({"serving": {"token": TOKEN}})
    state: dict[str, Any] = {
        "log": plog,
        "model": SimpleNamespace(classes=CLASSES, version="2", name="digits"),
        "records": records,
    }
    app = FastAPI()
    settings = Settings(root=tmp_path, params=validate_params(params, "test params"))
    enqueue_frame(LabelQueue(plog, LabelingRules.from_settings(settings)), plog.read_window())
    add_routes(app, settings)  # the real routes, over a stand-in model and log:
    app.dependency_overrides[serving_model] = lambda: state["model"]
    app.dependency_overrides[open_log] = lambda: state["log"]
    state["client"] = TestClient(app, base_url="http://127.0.0.1")  # a loopback Host: guards refuse others
    state["auth"] = {"Authorization": f"Bearer {TOKEN}"}
    return state


def test_token_guards_everything_but_the_pages_and_the_metrics(setup: dict[str, Any]) -> None:
    client, auth = setup["client"], setup["auth"]
    first = setup["records"][0].id
    for method, path in [("get", "/label/next"), ("get", f"/label/image/{first}"), ("post", f"/label/{first}/skip"),
                         ("get", "/label/review/items"), ("post", "/label/review/apply")]:
        assert getattr(client, method)(path).status_code == 401, path
        wrong = {"Authorization": "Bearer nope"}
        assert getattr(client, method)(path, headers=wrong).status_code == 401, path
    page = client.get("/label")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "label.js" in page.text
    assert client.get("/label/review").status_code == 200
    assert client.get("/label/assets/label.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/label/assets/..%2Fapp.py").status_code == 404
    assert client.get("/metrics/labeling").json()["queued"] == 3
    assert client.get("/label/next", headers=auth).status_code == 200


def test_next_image_label_skip_invalid(setup: dict[str, Any]) -> None:
    client, auth, plog = setup["client"], setup["auth"], setup["log"]
    first, second, third = (r.id for r in setup["records"])
    data = client.get("/label/next", params={"session": "tab-1"}, headers=auth).json()
    assert data["classes"] == CLASSES and data["model_version"] == "2"
    item = data["item"]
    assert item["prediction_id"] == first and item["reason"] == "low_confidence" and item["has_image"]
    assert [g["label"] for g in item["top_guesses"]][0] in ("0", "1")  # the logged label "2" had 0.2
    assert data["progress"]["queued"] == 3

    image = client.get(f"/label/image/{first}", headers=auth)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == Path(plog.get(first).image_path).read_bytes()
    assert client.get(f"/label/image/{second}", headers=auth).status_code == 404  # not stored
    assert client.get("/label/image/nope", headers=auth).status_code == 404

    assert client.post(f"/label/{first}", json={"label": "7"}, headers=auth).status_code == 422
    assert client.post("/label/nope", json={"label": "1"}, headers=auth).status_code == 404
    stored = client.post(f"/label/{first}", json={"label": "1"}, headers=auth)
    assert stored.json() == {"prediction_id": first, "state": "labeled", "label": "1", "in_queue": True}
    assert plog.get(first).feedback_label == "1"

    assert client.post(f"/label/{second}/skip", headers=auth).json()["state"] == "skipped"
    assert client.post(f"/label/{second}/skip", headers=auth).status_code == 409
    assert client.post(f"/label/{third}/invalid", headers=auth).json()["state"] == "invalid"
    assert client.post("/label/nope/invalid", headers=auth).status_code == 404
    after = client.get("/label/next", headers=auth).json()
    assert after["item"] is None
    assert after["progress"]["labeled"] == 1 and after["progress"]["skipped"] == 1
    assert after["progress"]["invalid"] == 1


def test_unavailable_log_or_model_is_a_503(setup: dict[str, Any]) -> None:
    client, auth = setup["client"], setup["auth"]
    first = setup["records"][0].id
    setup["model"] = None
    assert client.post(f"/label/{first}", json={"label": "1"}, headers=auth).status_code == 503
    setup["log"] = None
    answer = client.get("/label/next", headers=auth)
    assert answer.status_code == 503 and "unavailable" in answer.json()["detail"]


def test_a_label_from_a_session_whose_lease_went_to_another_labeler_is_refused(setup: dict[str, Any]) -> None:
    client, auth, plog = setup["client"], setup["auth"], setup["log"]
    first = client.get("/label/next", params={"session": "tab-1"}, headers=auth).json()["item"]["prediction_id"]
    queue = LabelQueue(plog, LabelingRules.from_settings(client.app.state.labeling.settings))
    later = datetime.now(UTC) + timedelta(seconds=queue.rules.params.lease_seconds + 1)
    assert queue.next_item(claimant="tab-2", now=later).prediction_id == first  # tab-1's lease ran out
    for path, body in [(f"/label/{first}", {"label": "1"}), (f"/label/{first}/skip", None),
                       (f"/label/{first}/invalid", None)]:
        late = client.post(path, params={"session": "tab-1"}, json=body, headers=auth)
        assert late.status_code == 409 and "held by another labeler" in late.json()["detail"], path
    assert plog.get(first).feedback_label is None and queue.get(first)["state"] == "queued"
    stored = client.post(f"/label/{first}", params={"session": "tab-2"}, json={"label": "1"}, headers=auth)
    assert stored.status_code == 200 and plog.get(first).feedback_label == "1"


def test_undo_takes_back_the_last_answer(setup: dict[str, Any]) -> None:
    """A label is removed from the log and the image queued again, held for the undoing tab; so is a skip."""
    client, auth, plog = setup["client"], setup["auth"], setup["log"]
    first, second, _third = (r.id for r in setup["records"])
    assert client.post(f"/label/{first}", json={"label": "1"}, headers=auth).status_code == 200
    assert client.post(f"/label/{second}/skip", headers=auth).status_code == 200
    assert client.post(f"/label/{first}/undo", params={"session": "tab-1"}, headers=auth).json()["state"] == "queued"
    assert plog.get(first).feedback_label is None and plog.get(first).feedback_at is None
    progress = client.get("/metrics/labeling").json()
    assert progress["labeled"] == 0 and progress["queued"] == 2  # not re-marked labeled by sync_feedback
    assert client.get("/label/next", params={"session": "tab-2"}, headers=auth).json()["item"]["prediction_id"] != first
    again = client.get("/label/next", params={"session": "tab-1"}, headers=auth).json()["item"]
    assert again["prediction_id"] == first  # the undoing tab sees it next
    assert client.post(f"/label/{second}/undo", headers=auth).status_code == 200
    assert client.get("/metrics/labeling").json()["skipped"] == 0
    assert client.post(f"/label/{second}/undo", headers=auth).status_code == 409  # queued: nothing to undo
    assert client.post("/label/nope/undo", headers=auth).status_code == 404


def test_the_item_says_what_the_disagreeing_model_guessed(setup: dict[str, Any]) -> None:
    """Where the disagreement rule fired, the item carries the other version's guess for the page's badge."""
    import pandas as pd

    client, auth, plog = setup["client"], setup["auth"], setup["log"]
    disputed, agreed = record(0.9, label="2"), record(0.9, label="1")
    plog.write([disputed, agreed])
    previous = pd.DataFrame([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], index=[disputed.id, agreed.id], columns=CLASSES)
    settings = client.app.state.labeling.settings
    queue = LabelQueue(plog, LabelingRules.from_settings(settings))
    enqueue_frame(queue, plog.read_window(), previous_probabilities=previous, previous_version="1")
    assert (queue.get(agreed.id) or {}).get("other_label") is None  # same guess: no disagreement recorded
    item = client.get("/label/next", params={"session": "tab-1"}, headers=auth).json()["item"]
    assert item["prediction_id"] == disputed.id and item["reason"] == "disagreement"
    assert (item["other_label"], item["other_version"], item["predicted_label"]) == ("0", "1", "2")
    assert client.post(f"/label/{disputed.id}/skip", params={"session": "tab-1"}, headers=auth).status_code == 200
    low_confidence = client.get("/label/next", params={"session": "tab-1"}, headers=auth).json()["item"]
    assert low_confidence["reason"] == "low_confidence" and low_confidence["other_label"] is None
    assert low_confidence["other_version"] is None
    page = client.get("/label/assets/label.js").text
    assert "other_label" in page and "other_version" in page and '" said "' in page


def test_review_image_answers_404_with_a_reason_and_never_a_server_path(setup: dict[str, Any], tmp_path: Path) -> None:
    from visionloop.data.manifest import read_manifest
    from visionloop.data.prepare import prepare
    from visionloop.labeling.suspects import prepared_dir

    client, auth = setup["client"], setup["auth"]
    missing = client.get("/label/review/image/abc", headers=auth)  # nothing prepared yet
    assert missing.status_code == 404 and "visionloop data prepare" in missing.json()["detail"]
    assert str(tmp_path) not in missing.text

    source = tmp_path / "source"
    for i in range(4):
        (source / str(i % 2)).mkdir(parents=True, exist_ok=True)
        save_png(np.full((8, 8), i * 40, dtype=np.uint8), source / str(i % 2) / f"{i}.png")
    out = prepared_dir(client.app.state.labeling.settings)
    prepare(source, out, channels=1, min_side=4, max_pixels=10_000, val_fraction=0.25, test_fraction=0.25, seed=0)
    row = read_manifest(out).iloc[0]
    sha = row["sha256"]
    assert client.get(f"/label/review/image/{sha}", headers=auth).status_code == 200
    Path(row["abs_path"]).unlink()
    gone = client.get(f"/label/review/image/{sha}", headers=auth)
    assert gone.status_code == 404 and "missing" in gone.json()["detail"] and str(tmp_path) not in gone.text
