"""The gate's shadow rule (defer, refuse on disagreement where no labels exist) and shadow entries on the spool."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from helpers.project import repo_params

from visionloop.config import Settings
from visionloop.params import validate_params
from visionloop.promotion.gate import GateResult
from visionloop.promotion.shadow import ShadowReport, judge_shadow
from visionloop.store import spool
from visionloop.store.records import PendingShadow
from visionloop.store.shadowlog import shadow_rows


def settings_with(tmp_path: Path, min_predictions: int, max_disagreement: float) -> Settings:
    params = repo_params({"registry": {"gate": {"shadow": {"min_predictions": min_predictions,
                                                           "max_disagreement": max_disagreement}}}})
    return Settings(root=tmp_path, params=validate_params(params, "test params"))


def passed_gate(n_production: int) -> GateResult:
    return GateResult("digits-cnn", "1", "2", True, "promoted", "promoted: v2 beats champion v1 on macro_f1",
                      metrics={"champion": {"macro_f1": 0.9}, "challenger": {"macro_f1": 0.95}},
                      gate_set={"n_test_set": 100, "n_production": n_production})


def report(n: int, agreement: float, n_labeled: int = 0) -> ShadowReport:
    return ShadowReport("digits-cnn", "1", "2", n=n, agreement=agreement, champion_confidence=0.9,
                        challenger_confidence=0.8, champion_ms=0.2, challenger_ms=0.3, n_labeled=n_labeled,
                        champion_labels=n_labeled,
                        champion_accuracy=0.5 if n_labeled else None, challenger_accuracy=0.9 if n_labeled else None)


def test_too_few_shadow_predictions_defer_whatever_the_verdict(tmp_path: Path) -> None:
    gate = judge_shadow(settings_with(tmp_path, 100, 0.5), passed_gate(0), report(37, 0.99))
    assert gate.decision == "deferred" and not gate.passed
    assert "37 of the 100 shadow predictions" in gate.reason and "v1 serves on" in gate.reason
    assert gate.metrics["shadow"]["n"] == 37 and gate.metrics["challenger"] == {"macro_f1": 0.95}


def test_disagreement_refuses_only_where_no_labels_exist(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, 10, 0.5)
    unlabeled = judge_shadow(settings, passed_gate(0), report(50, 0.3))
    assert unlabeled.decision == "refused" and "disagrees with the champion on 0.700 of 50" in unlabeled.reason
    with_gate_labels = judge_shadow(settings, passed_gate(20), report(50, 0.3))
    with_shadow_labels = judge_shadow(settings, passed_gate(0), report(50, 0.3, n_labeled=12))
    for gate in (with_gate_labels, with_shadow_labels):
        assert gate.decision == "promoted" and gate.passed
        assert "shadow: 50 shadow predictions of v2 beside v1: agreement 0.300" in gate.reason
    assert "on 12 labeled: accuracy 0.500 → 0.900" in with_shadow_labels.reason
    agreeing = judge_shadow(settings, passed_gate(0), report(50, 0.8))
    assert agreeing.decision == "promoted" and agreeing.metrics["shadow"]["latency_ratio"] == pytest.approx(1.5)
    assert judge_shadow(settings_with(tmp_path, 0, 0.5), passed_gate(0), report(0, 0.0)).decision == "promoted"


def test_a_shadow_entry_survives_the_spool_and_becomes_rows(tmp_path: Path) -> None:
    reduction = {"n_components": 2, "mean": [0.0, 0.0, 0.0], "components": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}
    entry = PendingShadow(
        ids=["a", "b"], created_at=datetime.now(UTC), model_name="digits-cnn", champion_version="1",
        champion_labels=["3", "5"], champion_confidences=[0.9, 0.6], champion_ms=[0.25, 0.25],
        challenger_version="2", challenger_classes=["3", "5", "8"], reduction=reduction,
        probabilities=np.array([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1]], np.float32),
        embeddings=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32), challenger_ms=0.5,
    )
    spool.spill(tmp_path, [entry])
    ((_, (back,)),) = spool.load(tmp_path)
    assert isinstance(back, PendingShadow) and back.ids == entry.ids and back.champion_ms == [0.25, 0.25]
    np.testing.assert_array_equal(back.probabilities, entry.probabilities)
    rows = shadow_rows(back)
    assert [(r["champion_label"], r["challenger_label"]) for r in rows] == [("3", "8"), ("5", "5")]
    assert rows[0]["challenger_confidence"] == np.float32(0.7) and rows[1]["challenger_ms"] == 0.5
    assert '"emb_0": 4.0, "emb_1": 5.0' in rows[1]["features"] and '"prob_8": ' in rows[1]["features"]
