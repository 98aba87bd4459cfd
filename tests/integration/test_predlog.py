"""The prediction log: rows in a real SQLite database, features flattened for monitoring, the writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from helpers.server import wait_for
from PIL import Image

from visionloop.contracts import PredictionRecord
from visionloop.monitoring.features import IMAGE_STAT_COLUMNS, fit_reduction, image_statistics, reduce_embeddings
from visionloop.store import spool
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import PendingFeedback, PendingPredictions
from visionloop.store.writer import PredictionLogWriter
from visionloop.store.writer_process import ProcessLogWriter

CLASSES = ["0", "1", "2"]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(i: int, version: str = "1", at: datetime | None = None) -> PredictionRecord:
    probabilities = {"0": 0.1, "1": 0.2, "2": 0.7}
    return PredictionRecord(
        id=str(uuid.uuid4()),
        created_at=at or T0 + timedelta(seconds=i),
        model_name="digits",
        model_version=version,
        label="2",
        confidence=0.7,
        probabilities=probabilities,
        features={"brightness": i / 10, "contrast": 0.2, "emb_1": -float(i), "emb_0": float(i)},
        image_path=None,
    )


@pytest.fixture
def broken_url(tmp_path: Path) -> str:
    """A SQLite URL whose parent 'directory' is a regular file: the database can never be opened."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    return f"sqlite:///{blocker / 'predictions.db'}"


def test_read_window_is_latest_n_oldest_first_with_features_flattened(plog: PredictionLog) -> None:
    records = [record(i, version="1" if i < 6 else "2") for i in range(10)]
    assert plog.write(records) == 10
    assert plog.problem() is None

    window = plog.read_window(last_n=4)
    assert list(window["id"]) == [r.id for r in records[6:]]
    for column in ("brightness", "contrast", "emb_0", "emb_1", "pred_label", "confidence", "prob_0", "prob_2"):
        assert column in window.columns
    # embedding columns come in numeric order, after the image statistics
    assert list(window.columns).index("emb_0") < list(window.columns).index("emb_1")
    assert window["emb_1"].tolist() == [-6.0, -7.0, -8.0, -9.0]
    assert window["prob_2"].tolist() == [0.7] * 4
    assert (window["pred_label"] == window["label"]).all()
    assert str(window["created_at"].dt.tz) == "UTC"
    assert window["created_at"].iloc[0] == records[6].created_at

    assert len(plog.read_window(model_version="1")) == 6
    since = plog.read_window(since=T0 + timedelta(seconds=8))
    assert list(since["id"]) == [records[8].id, records[9].id]
    # a naive `since` is taken as UTC
    assert len(plog.read_window(since=datetime(2024, 5, 1, 12, 0, 5))) == 5
    assert len(plog.read_window(last_n=3, model_version="1")) == 3


def test_empty_window_has_the_base_columns(plog: PredictionLog) -> None:
    frame = plog.read_window(last_n=10)
    assert frame.empty
    assert {"id", "created_at", "model_version", "label", "pred_label", *IMAGE_STAT_COLUMNS} <= set(frame.columns)


def test_feedback_and_labeled(plog: PredictionLog) -> None:
    records = [record(i) for i in range(3)]
    plog.write(records)
    assert plog.add_feedback(records[1].id, "1") is True
    assert plog.add_feedback("no-such-id", "1") is False

    stored = plog.get(records[1].id)
    assert stored is not None and stored.feedback_label == "1"
    assert stored.feedback_at is not None and stored.feedback_at.tzinfo is not None
    assert stored.probabilities == records[1].probabilities

    labeled = plog.labeled()
    assert list(labeled["id"]) == [records[1].id]
    assert labeled["feedback_label"].tolist() == ["1"]
    assert plog.labeled(since=datetime.now(UTC) + timedelta(hours=1)).empty


def test_unreachable_database_is_unhealthy(broken_url: str) -> None:
    log = PredictionLog(broken_url)
    assert "unable to open database file" in log.problem()
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        log.write([record(0)])


def pending(n: int, version: str = "1", dim: int = 6) -> PendingPredictions:
    rng = np.random.default_rng(n)
    images = [rng.integers(0, 256, (12, 10), dtype=np.uint8) for _ in range(n)]
    logits = rng.normal(size=(n, len(CLASSES)))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    embeddings = rng.normal(size=(n, dim)).astype(np.float32)
    return PendingPredictions(
        ids=[str(uuid.uuid4()) for _ in range(n)],
        created_at=datetime.now(UTC),
        model_name="digits",
        model_version=version,
        classes=CLASSES,
        reduction=fit_reduction(rng.normal(size=(50, dim)), 2),
        images=images,
        probabilities=probabilities,
        embeddings=embeddings,
    )


@pytest.fixture(params=[PredictionLogWriter, ProcessLogWriter], ids=["thread", "process"])
def writer_class(request):
    """Both writers keep one contract: the app may use either (serving.log_writer)."""
    return request.param


def test_writer_stores_rows_images_and_the_drift_features(plog: PredictionLog, tmp_path: Path, writer_class) -> None:
    writer = writer_class(plog, tmp_path / "images", max_queue=100)
    writer.start()
    try:
        batch = pending(5)
        assert writer.submit(batch)
        assert writer.flush(timeout=10)
        status = writer.status()
        assert status.state == "ok" and status.written == 5 and status.failed == 0 and status.queued == 0
    finally:
        writer.close()

    window = plog.read_window()
    assert sorted(window["id"]) == sorted(batch.ids)
    row = window.set_index("id").loc[batch.ids[2]]
    expected = image_statistics(batch.images[2])
    for name in IMAGE_STAT_COLUMNS:
        assert row[name] == pytest.approx(expected[name])
    reduced = reduce_embeddings(batch.embeddings[2], batch.reduction)
    assert [row["emb_0"], row["emb_1"]] == pytest.approx(list(reduced), rel=1e-5)
    assert row["label"] == CLASSES[int(batch.probabilities[2].argmax())]
    assert row["prob_1"] == pytest.approx(batch.probabilities[2][1])
    # the input image is kept as PNG named by the prediction id, pixel for pixel
    path = Path(row["image_path"])
    assert path.name == f"{batch.ids[2]}.png" and path.is_relative_to(tmp_path / "images")
    assert np.array_equal(np.array(Image.open(path)), batch.images[2])


def test_writer_counts_failures_when_the_database_is_down(broken_url: str, tmp_path: Path, writer_class) -> None:
    writer = writer_class(PredictionLog(broken_url), tmp_path / "images", max_queue=100)
    writer.start()
    try:
        assert writer.status().state == "unavailable"  # the start-up probe already failed
        assert writer.submit(pending(3))
        assert writer.flush(timeout=10)
        status = writer.status()
        assert status.state == "unavailable"
        assert status.failed == 3 and status.written == 0
        assert status.last_error
    finally:
        writer.close()


def test_writer_recovers_when_the_database_comes_back(broken_url: str, tmp_path: Path, writer_class) -> None:
    log = PredictionLog(broken_url)
    writer = writer_class(log, None, max_queue=100)
    writer.start()
    try:
        writer.submit(pending(2))
        assert writer.flush(timeout=10)
        assert writer.status().state == "unavailable" and writer.status().failed == 2
        blocker = tmp_path / "not-a-dir"  # the outage ends: the database's folder appears
        blocker.unlink()
        blocker.mkdir()
        writer.submit(pending(4))
        assert writer.flush(timeout=10)
        status = writer.status()
        assert status.state == "ok" and status.written == 4 and status.failed == 2
    finally:
        writer.close()
    assert len(log.read_window()) == 4
    assert log.read_window()["image_path"].isna().all()  # no image dir: no stored images


def test_a_full_queue_drops_and_counts_instead_of_blocking(plog: PredictionLog, writer_class) -> None:
    writer = writer_class(plog, None, max_queue=1)  # not started: nothing drains the queue
    assert writer.submit(pending(2)) is True
    assert writer.submit(pending(3)) is False
    status = writer.status()
    assert status.dropped == 3 and status.queued == 2


def test_write_skips_ids_already_stored(plog: PredictionLog) -> None:
    """A replayed entry may have been written before the writer could say so: its rows are skipped, not refused."""
    records = [record(i) for i in range(4)]
    assert plog.write(records[:2]) == 2
    assert plog.write(records) == 2  # the two new ones; the insert of the others does not cost them
    assert plog.count() == 4 and plog.read_window()["id"].is_unique


def logged_ids(plog: PredictionLog) -> list[str]:
    return plog.read_window()["id"].tolist()


def test_a_killed_writer_process_is_restarted_with_what_it_had_not_written(plog: PredictionLog) -> None:
    writer = ProcessLogWriter(plog, None, max_queue=100)
    writer.start()
    try:
        first, stuck, later = pending(2), pending(3), pending(4)
        writer.submit(first)
        assert writer.flush(timeout=10)
        child = writer._child.process
        os.kill(child.pid, signal.SIGSTOP)  # it cannot write what comes next...
        writer.submit(stuck)
        os.kill(child.pid, signal.SIGKILL)  # ...and dies with it (e.g. the OOM killer)
        status = wait_for(lambda: (s := writer.status()).state == "degraded" and s, "the log to be degraded")
        assert "exited" in status.last_error and status.queued >= 3
        writer.submit(later)  # the answer path never blocks on a dead writer
        assert writer.flush(timeout=60)
        status = writer.status()
        assert status.state == "ok" and status.restarts == 1 and status.written == 9 and status.queued == 0
    finally:
        writer.close()
    ids = logged_ids(plog)
    assert sorted(ids) == sorted(first.ids + stuck.ids + later.ids)  # each once


def test_a_stop_spills_what_is_unwritten_and_the_next_writer_replays_it(plog: PredictionLog, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    writer = ProcessLogWriter(plog, None, max_queue=100, spool_dir=spool_dir)
    writer.start()
    batches = [pending(3), pending(2)]
    os.kill(writer._child.process.pid, signal.SIGSTOP)  # a writer far behind
    for batch in batches:
        assert writer.submit(batch)
    assert writer.submit_feedback(batches[1].ids[0], "2", datetime.now(UTC))
    writer.close(timeout=0.2)
    assert writer.status().spooled == 3 and logged_ids(plog) == []
    assert len(list(spool_dir.glob("*.jsonl"))) == 1

    again = PredictionLogWriter(plog, None, max_queue=100, spool_dir=spool_dir)  # either writer replays
    again.start()
    try:
        assert again.flush(timeout=20)
        assert again.status().replayed == 3 and again.status().written == 5
    finally:
        again.close()
    assert sorted(logged_ids(plog)) == sorted(batches[0].ids + batches[1].ids)
    assert plog.get(batches[1].ids[0]).feedback_label == "2"
    assert list(spool_dir.iterdir()) == []  # replayed and written: the file is gone


def test_a_stop_without_time_to_drain_loses_nothing(plog: PredictionLog, tmp_path: Path, writer_class) -> None:
    spool_dir = tmp_path / "spool"
    writer = writer_class(plog, None, max_queue=1000, spool_dir=spool_dir)
    writer.start()
    batches = [pending(4) for _ in range(30)]
    for batch in batches:
        writer.submit(batch)
    writer.close(timeout=0)
    again = writer_class(plog, None, max_queue=1000, spool_dir=spool_dir)
    again.start()
    try:
        assert again.flush(timeout=60)
    finally:
        again.close()
    assert sorted(logged_ids(plog)) == sorted(i for batch in batches for i in batch.ids)  # all, each once


def test_feedback_for_a_waiting_prediction_is_queued_behind_it(plog: PredictionLog, writer_class) -> None:
    writer = writer_class(plog, None, max_queue=100)  # not started yet: the writer is behind
    batch = pending(2)
    writer.submit(batch)
    at = datetime.now(UTC)
    assert writer.submit_feedback(batch.ids[1], "0", at) is True
    assert writer.submit_feedback("never-issued", "0", at) is False
    writer.start()
    try:
        assert writer.flush(timeout=20)
    finally:
        writer.close()
    stored = plog.get(batch.ids[1])
    assert stored is not None and stored.feedback_label == "0"
    assert writer.submit_feedback(batch.ids[1], "1", at) is False  # written now: the caller updates the log


def test_the_spool_keeps_entries_exactly_and_sets_aside_what_it_cannot_read(tmp_path: Path) -> None:
    batch = pending(3)
    label = PendingFeedback(batch.ids[0], "1", datetime.now(UTC))
    path = spool.spill(tmp_path, [batch, label])
    (tmp_path / "0-broken.jsonl").write_text("{not json\n")
    [(loaded_path, entries)] = spool.load(tmp_path)
    assert loaded_path == path and entries[1] == label
    back = entries[0]
    assert back.ids == batch.ids and back.created_at == batch.created_at and back.reduction == batch.reduction
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(back.images, batch.images, strict=True))
    assert np.array_equal(back.probabilities, batch.probabilities) and back.embeddings.dtype == np.float32
    assert (tmp_path / "0-broken.jsonl.bad").exists()


EXIT_AFTER_A_DEAD_WRITER = """
import sys
from datetime import UTC, datetime
import numpy as np
from visionloop.store import spool
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import PendingFeedback, PendingPredictions
from visionloop.store.writer_process import ProcessLogWriter

writer = ProcessLogWriter(PredictionLog(sys.argv[1]), None, max_queue=100)
writer.start()
writer._child.process.kill()
writer._child.process.join(5)
big = [np.zeros((1000, 1000), np.uint8)] * 2  # far more than a pipe holds: the feeder thread blocks on it
writer.submit(PendingPredictions(["a", "b"], datetime.now(UTC), "m", "1", ["x"], None, big,
                                 np.ones((2, 1)), np.zeros((2, 4))))
writer.close(timeout=1)
print("closed")
"""


def test_the_server_process_exits_although_its_dead_writer_left_bytes_unread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    done = subprocess.run([sys.executable, "-c", EXIT_AFTER_A_DEAD_WRITER, url], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "closed" in done.stdout, done.stderr[-2000:]
