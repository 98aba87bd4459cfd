"""The prediction log: rows in a real SQLite database, features flattened for monitoring, the writer."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionloop.contracts import PredictionRecord
from visionloop.monitoring.features import IMAGE_STAT_COLUMNS, fit_reduction, image_statistics, reduce_embeddings
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import PendingPredictions
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


def test_a_dead_writer_process_is_reported_and_submitting_still_returns(plog: PredictionLog) -> None:
    writer = ProcessLogWriter(plog, None, max_queue=100)
    writer.start()
    try:
        assert writer.status().state == "ok"
        writer._process.kill()  # e.g. the OOM killer
        writer._process.join(5)
        writer.submit(pending(2))  # the answer path never blocks on a dead writer
        assert writer.flush(timeout=2) is False
        status = writer.status()
        assert status.state == "unavailable" and "exited" in status.last_error and status.queued == 2
    finally:
        writer.close()


EXIT_AFTER_A_DEAD_WRITER = """
import sys
from datetime import UTC, datetime
import numpy as np
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import PendingPredictions
from visionloop.store.writer_process import ProcessLogWriter

writer = ProcessLogWriter(PredictionLog(sys.argv[1]), None, max_queue=100)
writer.start()
writer._process.kill()
writer._process.join(5)
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
