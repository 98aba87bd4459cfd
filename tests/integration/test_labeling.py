"""The labeling queue: each sampling rule, the per-hour caps, scans of the log, the state machine, progress."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers.models import tiny_model
from helpers.project import REPO, repo_params
from helpers.records import CLASSES, T0, record

from visionloop.config import Settings, deep_merge
from visionloop.labeling.queue import CAPPED, INVALID, LABELED, QUEUED, SKIPPED, LabelQueue, QueueError, UnknownItem
from visionloop.labeling.rules import (
    DISAGREEMENT,
    DRIFT,
    LOW_CONFIDENCE,
    RANDOM,
    REASONS,
    LabelingRules,
    uniform_from_id,
)
from visionloop.labeling.scan import enqueue_frame, enqueue_from_log, last_scan_through, previous_model_probabilities
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import save_png


def rules(seed: int | None = None, **labeling: Any) -> LabelingRules:
    """params.yaml's rules with only what a test switches on: random off unless asked, no caps unless asked.

    ``labeling``: overrides of ``labeling:`` sections, e.g. ``drift={"cap_per_hour": 3}``.
    """
    off: dict[str, Any] = {reason: {"cap_per_hour": None} for reason in REASONS}
    off["random"]["rate"] = 0.0
    settings = Settings.load(REPO).with_overrides({"labeling": deep_merge(off, labeling)})
    return LabelingRules(settings.params.labeling, settings.seed if seed is None else seed)


def queued_ids(queue: LabelQueue, state: str = QUEUED) -> dict[str, dict[str, Any]]:
    with queue.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM label_queue").mappings().all()
    return {r["prediction_id"]: dict(r) for r in rows if r["state"] == state}


def test_low_confidence_rule_queues_below_threshold_least_confident_first(plog: PredictionLog) -> None:
    records = [record(0.3), record(0.55), record(0.59), record(0.6), record(0.95)]
    plog.write(records)
    queue = LabelQueue(plog, rules())
    result = enqueue_frame(queue, plog.read_window())
    assert result.examined == 5
    assert result.queued[LOW_CONFIDENCE] == 3
    queued = queued_ids(queue)
    assert set(queued) == {records[0].id, records[1].id, records[2].id}
    assert all(row["reason"] == LOW_CONFIDENCE for row in queued.values())
    # priority = weight (1) + (t - conf) / t
    assert queued[records[0].id]["priority"] == pytest.approx(1 + (0.6 - 0.3) / 0.6)
    order = [queue.next_item().prediction_id for _ in range(1)]
    assert order == [records[0].id]


def test_random_rule_is_a_reproducible_small_share(plog: PredictionLog) -> None:
    records = [record(0.99) for _ in range(600)]
    plog.write(records)
    queue = LabelQueue(plog, rules(seed=7, random={"rate": 0.1}))
    enqueue_frame(queue, plog.read_window())
    picked = set(queued_ids(queue))
    expected = {r.id for r in records if uniform_from_id(r.id, 7) < 0.1}
    assert picked == expected
    assert 30 <= len(picked) <= 90  # 60 expected; binomial sd ≈ 7.3
    assert {row["reason"] for row in queued_ids(queue).values()} == {RANDOM}
    assert all(row["priority"] == 0.0 for row in queued_ids(queue).values())


def test_disagreement_rule_with_given_previous_outputs(plog: PredictionLog) -> None:
    agree, disagree, unknown = record(0.9, label="2"), record(0.9, label="2"), record(0.9, label="2")
    plog.write([agree, disagree, unknown])
    previous = pd.DataFrame(
        [[0.05, 0.05, 0.9], [0.7, 0.2, 0.1]], index=[agree.id, disagree.id], columns=CLASSES
    )
    queue = LabelQueue(plog, rules())
    result = enqueue_frame(queue, plog.read_window(), previous_probabilities=previous)
    queued = queued_ids(queue)
    assert set(queued) == {disagree.id}
    assert result.queued[DISAGREEMENT] == 1
    # total-variation distance between (0.05, 0.05, 0.9) and (0.7, 0.2, 0.1) = 0.8; weight 3
    assert queued[disagree.id]["priority"] == pytest.approx(3 + 0.8)


def test_disagreement_rule_with_a_previous_model_on_the_stored_images(plog: PredictionLog, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = []
    for i, label in enumerate(["0", "1", "2", "0"]):
        path = tmp_path / "images" / f"{i}.png"
        save_png(rng.integers(0, 256, (32, 32), dtype=np.uint8), path)
        records.append(record(0.9, label=label, image_path=str(path)))
    answered_by_previous = record(0.9, label="0", version="1", image_path=records[0].image_path)
    no_image = record(0.9, label="0")
    plog.write([*records, answered_by_previous, no_image])
    previous = tiny_model(CLASSES, "1", always=2)
    frame = plog.read_window()
    probabilities = previous_model_probabilities(frame, previous)
    assert set(probabilities.index) == {r.id for r in records}  # same version and image-less rows left out
    assert (probabilities.idxmax(axis=1) == "2").all()
    queue = LabelQueue(plog, rules())
    enqueue_frame(queue, frame, previous_probabilities=probabilities)
    assert set(queued_ids(queue)) == {records[0].id, records[1].id, records[3].id}


def test_drift_rule_flags_values_outside_the_reference_range_of_drifted_features(plog: PredictionLog) -> None:
    rng = np.random.default_rng(1)
    reference = pd.DataFrame(
        {"brightness": rng.uniform(0.2, 0.4, 1000), "contrast": rng.uniform(0.1, 0.2, 1000), "pred_label": "1"}
    )
    inside = record(features={"brightness": 0.3, "contrast": 0.15})
    far = record(features={"brightness": 0.9, "contrast": 0.15})
    near = record(features={"brightness": 0.15, "contrast": 0.15})
    other_feature = record(features={"brightness": 0.3, "contrast": 0.9})  # contrast is not a drifted feature
    plog.write([inside, far, near, other_feature])
    queue = LabelQueue(plog, rules(drift={"quantile": 0.01}))
    result = enqueue_frame(
        queue, plog.read_window(), drifted_features=["brightness", "pred_label"], reference=reference
    )
    queued = queued_ids(queue)
    assert set(queued) == {far.id, near.id}
    assert result.drifted == 2 and result.queued[DRIFT] == 2
    assert all(row["reason"] == DRIFT and row["drifted"] for row in queued.values())
    assert 2 < queued[near.id]["priority"] < queued[far.id]["priority"] < 3
    # without a verdict the rule is off
    plog.write([record(features={"brightness": 5.0, "contrast": 0.15})])
    assert enqueue_frame(queue, plog.read_window()).queued[DRIFT] == 0


def test_caps_are_per_rule_and_per_hour_of_traffic_best_first(plog: PredictionLog) -> None:
    hour_a = [record(0.1 + 0.04 * i, at=T0 + timedelta(minutes=i)) for i in range(10)]
    hour_b = [record(0.1 + 0.04 * i, at=T0 + timedelta(hours=1, minutes=i)) for i in range(10)]
    plog.write(hour_a + hour_b)
    queue = LabelQueue(plog, rules(low_confidence={"cap_per_hour": 3}))
    result = enqueue_frame(queue, plog.read_window())
    assert result.queued[LOW_CONFIDENCE] == 6 and result.capped[LOW_CONFIDENCE] == 14
    queued = queued_ids(queue)
    assert set(queued) == {r.id for r in hour_a[:3] + hour_b[:3]}  # the least confident of each hour
    assert len(queued_ids(queue, CAPPED)) == 14

    # a later scan of the same hour finds the cap full; another rule with room still takes the image
    late = record(0.05, at=T0 + timedelta(minutes=30))
    both = record(0.05, at=T0 + timedelta(minutes=31))
    plog.write([late, both])
    queue.rules = rules(low_confidence={"cap_per_hour": 3}, random={"cap_per_hour": 1, "rate": 1.0})
    second = enqueue_frame(queue, plog.read_window())
    assert second.examined == 2
    assert second.queued == {DISAGREEMENT: 0, DRIFT: 0, LOW_CONFIDENCE: 0, RANDOM: 1}
    assert second.capped[LOW_CONFIDENCE] == 1


def test_the_highest_weight_rule_names_the_reason(plog: PredictionLog) -> None:
    both = record(0.4, label="2")
    plog.write([both])
    previous = pd.DataFrame([[0.8, 0.1, 0.1]], index=[both.id], columns=CLASSES)
    queue = LabelQueue(plog, rules())
    enqueue_frame(queue, plog.read_window(), previous_probabilities=previous)
    assert queued_ids(queue)[both.id]["reason"] == DISAGREEMENT


def settings_for(tmp_path: Path, labeling: dict[str, Any]) -> Settings:
    """The repository's params with some of ``labeling:`` replaced, for a project at ``tmp_path``."""
    return Settings(root=tmp_path, params=Settings.load(REPO).with_overrides({"labeling": labeling}).params)


def test_enqueue_from_log_scans_once_and_catches_late_rows_within_the_overlap(
    plog: PredictionLog, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, {"low_confidence": {"threshold": 0.6}, "random": {"rate": 0.0}, "scan_overlap_seconds": 600}
    )
    first = [record(0.3, at=T0 + timedelta(minutes=i)) for i in range(3)] + [record(0.9, at=T0)]
    plog.write(first)
    result = enqueue_from_log(settings, plog, now=T0 + timedelta(minutes=5))
    assert result.examined == 4 and result.queued[LOW_CONFIDENCE] == 3
    again = enqueue_from_log(settings, plog, now=T0 + timedelta(minutes=6))
    assert again.examined == 1 and again.total_queued == 0  # only the confident one is looked at again

    late = record(0.2, at=T0 + timedelta(minutes=1))  # written after the scan, timed before its end
    too_old = record(0.2, at=T0 - timedelta(minutes=30))
    newer = record(0.2, at=T0 + timedelta(minutes=20))
    plog.write([late, too_old, newer])
    third = enqueue_from_log(settings, plog, now=T0 + timedelta(minutes=21))
    queue = LabelQueue(plog, LabelingRules.from_settings(settings))
    queued = queued_ids(queue)
    assert late.id in queued and newer.id in queued
    assert too_old.id not in queued  # older than the overlap: a scan never goes that far back
    assert third.queued[LOW_CONFIDENCE] == 2
    assert last_scan_through(queue) == newer.created_at


def test_state_machine(plog: PredictionLog) -> None:
    records = [record(0.1 + 0.1 * i) for i in range(5)]
    plog.write(records)
    queue = LabelQueue(plog, rules())
    enqueue_frame(queue, plog.read_window())
    a, b, c, d, e = (r.id for r in records)

    item = queue.next_item()
    assert item.prediction_id == a and item.reason == LOW_CONFIDENCE
    guesses = item.top_guesses()
    assert [g["label"] for g in guesses] == ["0", "1", "2"]  # most probable first; the logged label has 0.1
    assert guesses[0]["probability"] == pytest.approx(0.45) and guesses[2]["probability"] == pytest.approx(0.1)
    assert queue.submit_label(a, "1", classes=CLASSES) is True
    assert plog.get(a).feedback_label == "1" and plog.get(a).feedback_at is not None
    assert queue.get(a)["state"] == LABELED and queue.get(a)["done_at"] is not None

    assert queue.next_item().prediction_id == b
    queue.skip(b)
    assert queue.get(b)["state"] == SKIPPED
    with pytest.raises(QueueError):
        queue.skip(b)  # only queued items can be skipped
    queue.mark_invalid(b)  # skipped → invalid is allowed
    assert queue.get(b)["state"] == INVALID
    with pytest.raises(QueueError):
        queue.mark_invalid(b)
    with pytest.raises(QueueError):
        queue.skip(a)  # labeled stays labeled
    with pytest.raises(QueueError):
        queue.requeue(a)

    assert queue.next_item().prediction_id == c
    queue.mark_invalid(c)
    queue.requeue(c)
    assert queue.get(c)["state"] == QUEUED and queue.get(c)["done_at"] is None
    assert queue.next_item().prediction_id == c

    with pytest.raises(ValueError, match="not one of"):
        queue.submit_label(c, "7", classes=CLASSES)
    with pytest.raises(UnknownItem):
        queue.submit_label("no-such-id", "1")
    with pytest.raises(UnknownItem):
        queue.skip("no-such-id")
    # a prediction outside the queue can be labeled too (like /feedback); it stays out of the queue
    outside = record(0.99)
    plog.write([outside])
    assert queue.submit_label(outside.id, "0") is False
    assert plog.get(outside.id).feedback_label == "0"

    # a label that arrived through /feedback takes the item out of the queue
    plog.add_feedback(c, "2")
    assert queue.next_item().prediction_id == d
    assert queue.get(c)["state"] == LABELED
    # labeling is allowed from any state, e.g. after "not valid"
    queue.mark_invalid(d)
    queue.submit_label(d, "0")
    assert queue.get(d)["state"] == LABELED
    assert queue.next_item().prediction_id == e
    queue.submit_label(e, "2")
    assert queue.next_item() is None


def test_claims_keep_two_labelers_on_different_images(plog: PredictionLog) -> None:
    records = [record(0.1), record(0.2), record(0.3)]
    plog.write(records)
    queue = LabelQueue(plog, rules(lease_seconds=60))
    enqueue_frame(queue, plog.read_window())
    now = T0
    first = queue.next_item(claimant="alice", now=now)
    second = queue.next_item(claimant="bob", now=now)
    assert first.prediction_id == records[0].id and second.prediction_id == records[1].id
    assert queue.next_item(claimant="alice", now=now).prediction_id == records[0].id  # a reload keeps it
    later = now + timedelta(seconds=61)  # alice walked away: her lease ran out
    assert queue.next_item(claimant="carol", now=later).prediction_id == records[0].id


def test_progress_counts_classes_and_the_labeled_share_of_drifted_traffic(plog: PredictionLog) -> None:
    reference = pd.DataFrame({"brightness": np.linspace(0.2, 0.4, 200)})
    drifted = [
        record(0.9, label=label, features={"brightness": 0.9}, at=T0 + timedelta(seconds=i))
        for i, label in enumerate(["0", "0", "1", "1"])
    ]  # equal scores: the earliest fill the cap
    low = [record(0.3, label="2"), record(0.3, label="1")]
    plog.write(drifted + low)
    queue = LabelQueue(plog, rules(drift={"cap_per_hour": 3}))
    enqueue_frame(queue, plog.read_window(), drifted_features=["brightness"], reference=reference)
    progress = queue.progress()
    assert progress["queued"] == 5 and progress["capped"] == 1
    assert progress["queued_per_class"] == {"0": 2, "1": 2, "2": 1}  # by predicted label; drifted[3] is capped
    assert queue.get(drifted[3].id)["state"] == CAPPED
    assert progress["drifted_traffic"] == {"total": 4, "labeled": 0, "labeled_share": 0.0}

    queue.submit_label(drifted[0].id, "0")
    plog.add_feedback(drifted[3].id, "1")  # through /feedback, the capped one or not
    progress = queue.progress()
    assert progress["drifted_traffic"]["labeled"] == 2
    assert progress["drifted_traffic"]["labeled_share"] == pytest.approx(0.5)
    assert progress["labeled"] == 2 and progress["labeled_total"] == 2
    assert progress["per_reason"][DRIFT][LABELED] == 2


def test_rules_come_from_params_yaml() -> None:
    params = repo_params()
    loaded = LabelingRules.from_settings(Settings.load(REPO))
    section = params["labeling"]
    assert loaded.params.low_confidence.threshold == section["low_confidence"]["threshold"]
    assert loaded.params.random.rate == section["random"]["rate"]
    assert loaded.rule(DRIFT).cap_per_hour == section["drift"]["cap_per_hour"]
    assert loaded.weight(DISAGREEMENT) > loaded.weight(RANDOM)
    assert loaded.seed == params["seed"]
