"""Shadow scoring in the real server, and the gate waiting for it.

The server (uvicorn on a loopback port) serves the session's digits CNN as champion v1; the challenger v2 is
the same network answering 8 for 3 and 3 for 8, so every flip is known in advance. The gate test works on a
copy of the session's trained project with a second registered version.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.images import png
from helpers.models import DigitsCNN
from helpers.project import REPO
from helpers.server import serve, wait_for

from visionloop.config import Settings
from visionloop.models.bundle import Predictions, ServableModel
from visionloop.serving.app import create_app
from visionloop.store.database import make_engine
from visionloop.store.records import PendingShadow
from visionloop.store.shadowlog import read_shadow, shadow_rows, write_shadow

SWAP = {"3": "8", "8": "3"}


class SwappedChallenger(ServableModel):
    """The champion's network, answering 8 for 3 and 3 for 8; raises on live traffic once ``failing`` is set."""

    failing = False

    def predict(self, images: list[np.ndarray]) -> Predictions:
        if self.failing:
            raise RuntimeError("the challenger broke")
        answer = super().predict(images)
        probabilities = answer.probabilities.copy()
        probabilities[:, [3, 8]] = probabilities[:, [8, 3]]
        return Predictions(probabilities, answer.embeddings)


class Fixed:
    """The ``ModelSource`` seam: one version, loaded by ``load``."""

    def __init__(self, version: str, load: Callable[[str], ServableModel]) -> None:
        self.version, self._load = version, load

    def current_version(self) -> str | None:
        return self.version

    def load(self, version: str) -> ServableModel:
        return self._load(version)


def start(tmp_path: Path, digits: DigitsCNN, monkeypatch: pytest.MonkeyPatch, share: float) -> Any:
    """The app: champion v1 and the swapped challenger v2, a log of this test's own, ``serving.shadow.share``."""
    monkeypatch.setenv("VISIONLOOP_DB_URL", f"sqlite:///{tmp_path / 'predictions.db'}")
    monkeypatch.setenv("VISIONLOOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("VISIONLOOP_TOKEN", raising=False)
    settings = Settings.load(REPO, overrides={"serving": {"poll_seconds": 0.05, "image_dir": str(tmp_path / "images"),
                                                          "shadow": {"share": share}}})
    champion = Fixed("1", lambda v: ServableModel.from_dir(digits.bundle, name="digits-cnn", version=v))
    challenger = Fixed("2", lambda v: SwappedChallenger.from_dir(digits.bundle, name="digits-cnn", version=v))
    return create_app(settings, champion, challenger=challenger), settings


def health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health").json()


def predict_each(url: str, images: list[np.ndarray]) -> list[dict[str, Any]]:
    """One request per image, as independent clients would send them."""
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.post("/predict", files=[("files", ("x.png", png(im), "image/png"))]) for im in images]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    return [a.json()["predictions"][0] for a in answers]


def test_shadow_rows_for_the_share_and_answers_as_without_a_challenger(
    tmp_path: Path, digits: DigitsCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionloop.promotion.shadow import shadow_report

    app, settings = start(tmp_path, digits, monkeypatch, share=0.5)
    images = digits.images[:40]
    alone = ServableModel.from_dir(digits.bundle).predict(images).probabilities  # the champion-only answers
    with serve(app) as url:
        wait_for(lambda: health(url)["shadow"]["challenger_version"] == "2", "the challenger loaded")
        answers = predict_each(url, images)
        wait_for(lambda: (h := health(url))["shadow"]["queued"] == 0 and h["shadow"]["offered"]
                 == h["shadow"]["scored"] == h["log"]["shadow_written"] > 0, "the shadow rows written")
    for answer, probabilities in zip(answers, alone, strict=True):
        assert answer["model_version"] == "1" and answer["label"] == str(int(probabilities.argmax()))
        assert answer["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-4)
    shadow = app.state.shadow.stats.to_dict()  # after the stop: every sampled request was scored and written
    assert shadow["failed"] == shadow["skipped"] == shadow["not_logged"] == shadow["incompatible"] == 0
    assert 0 < shadow["offered"] < len(images) and shadow["scored"] == shadow["offered"]  # one image per request
    engine = make_engine(settings.db_url)
    rows = read_shadow(engine, "digits-cnn", "2", "1")
    engine.dispose()
    by_id = {a["prediction_id"]: a for a in answers}
    assert len(rows) == shadow["scored"] and set(rows["id"]) <= set(by_id)
    for row in rows.itertuples():
        assert row.champion_label == by_id[row.id]["label"]
        assert row.challenger_label == SWAP.get(row.champion_label, row.champion_label)
        assert row.challenger_ms > 0 and row.champion_ms > 0 and np.isfinite(row.emb_0)
    report = shadow_report(settings, "1", "2")
    swapped = rows["champion_label"].isin(list(SWAP))
    assert report.n == len(rows) and report.agreement == pytest.approx(1 - swapped.mean())
    for (before, after), count in report.flips.stack().items():  # champion class → challenger class
        assert count == 0 or after == SWAP.get(before, before)


def test_a_failing_challenger_never_fails_a_request(
    tmp_path: Path, digits: DigitsCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = start(tmp_path, digits, monkeypatch, share=1.0)
    with serve(app) as url:
        wait_for(lambda: health(url)["shadow"]["challenger_version"] == "2", "the challenger loaded")
        app.state.challenger.current().failing = True
        answers = predict_each(url, digits.images[:12])
        shadow = wait_for(lambda: (s := health(url)["shadow"])["failed"] == 12 and s, "the failures counted")
    assert [a["model_version"] for a in answers] == ["1"] * 12 and all(a["label"] for a in answers)
    assert shadow["scored"] == 0 and shadow["offered"] == 12


def shadow_entries(n: int, agreeing: bool) -> PendingShadow:
    labels = [str(i % 10) for i in range(n)]
    probabilities = np.full((n, 10), 0.01, np.float32)
    for i, label in enumerate(labels):
        probabilities[i, int(label) if agreeing else (int(label) + 1) % 10] = 0.91
    return PendingShadow(
        ids=[str(uuid.uuid4()) for _ in range(n)], created_at=datetime.now(UTC), model_name="digits-cnn",
        champion_version="1", champion_labels=labels, champion_confidences=[0.9] * n, champion_ms=[0.2] * n,
        challenger_version="2", challenger_classes=[str(d) for d in range(10)], reduction=None,
        probabilities=probabilities, embeddings=np.zeros((n, 4), np.float32), challenger_ms=0.3,
    )


def test_the_gate_defers_until_shadow_predictions_then_judges(
    trained_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from visionloop.cli.main import app
    from visionloop.contracts import CHALLENGER
    from visionloop.models.registry import alias_version, client, model_version
    from visionloop.models.tracking import point_mlflow_at
    from visionloop.promotion.promote import promote
    from visionloop.promotion.shadow import pending_challenger

    settings = trained_copy.with_overrides({"registry": {"gate": {"shadow": {"min_predictions": 5}}}})
    name, v1 = settings.model_name, model_version(trained_copy, "1")
    point_mlflow_at(settings.tracking_uri)  # MLflow resolves a models:/m-… source through the global tracking URI
    mlflow = client(settings)  # v2: the same model registered again, as the challenger
    v2 = str(mlflow.create_model_version(name, v1.source, run_id=v1.run_id, tags=v1.tags).version)
    mlflow.set_registered_model_alias(name, CHALLENGER, v2)
    assert v2 == "2"  # the version the shadow rows below name

    deferred = promote(settings, trigger="test")
    assert deferred.decision == "deferred" and deferred.to_version == deferred.from_version == "1"
    assert "0 of the 5 shadow predictions" in deferred.reason
    assert alias_version(settings) == "1" and alias_version(settings, CHALLENGER) == v2
    assert pending_challenger(settings) is None  # not enough yet

    engine = make_engine(settings.db_url)
    written = write_shadow(engine, shadow_rows(shadow_entries(6, agreeing=True)))
    engine.dispose()
    assert written == 6 and pending_challenger(settings) == v2
    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(settings.root))
    shown = CliRunner().invoke(app, ["shadow", "report", "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["n"] == 6 and report["agreement"] == 1.0 and report["flips"]["3"] == {"3": 1}
    assert report["drift"] is None and "min_window" in report["drift_note"]

    judged = promote(settings, trigger="test")  # the same network: no gain on the gate set, refused on merit
    assert judged.decision == "refused" and "shadow: 6 shadow predictions of v2 beside v1: agreement 1.000" \
        in judged.reason
    assert judged.metrics["shadow"]["n"] == 6 and pending_challenger(settings) is None
