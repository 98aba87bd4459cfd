"""The prediction log (seam 4): one row per prediction, in any SQLAlchemy database.

Written by REST serving and batch inference, read by monitoring (``read_window``), labeling and
retraining (``labeled``). Features are stored as JSON and flattened on read into the columns that
``visionloop.monitoring.features.feature_frame`` produces for the reference profile (``IMAGE_STAT_COLUMNS``,
``emb_i``, ``pred_label``, ``confidence``, ``prob_<class>``), so a drift check compares like with like.

Serving never writes on the request path: ``PredictionLogWriter`` takes finished predictions from a
bounded queue in a background thread (or, through ``predlog_process``, in a child process), computes
their features, stores the input images as PNG (named by prediction id) and writes the rows. A database
that is down costs the rows (counted and reported by ``status()``), never the answer.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from visionloop.contracts import PredictionRecord
from visionloop.monitoring.features import (
    EMBEDDING_PREFIX,
    IMAGE_STAT_COLUMNS,
    LABEL_COLUMN,
    PROBABILITY_PREFIX,
    embedding_columns,
    image_statistics_many,
    reduce_embeddings,
)
from visionloop.store.schema import as_utc, metadata, predictions_table

log = logging.getLogger(__name__)

BASE_COLUMNS = [
    "id",
    "created_at",
    "model_name",
    "model_version",
    "label",
    "confidence",
    "image_path",
    "source",
    "feedback_label",
    "feedback_at",
]


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets WAL and a busy timeout so readers and writers coexist."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets monitoring read while the server writes.
            cursor = dbapi_connection.cursor()
            with suppress(Exception):
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; no fsync per commit
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class PredictionLog:
    """Read and write the ``predictions`` table of one database (the table is created on first use)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PredictionLog({self.engine.url.render_as_string(hide_password=True)!r})"

    def ensure_schema(self) -> None:
        """Create the table if it is missing; retried on each use until it succeeds."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                metadata.create_all(self.engine)
                self._schema_ready = True

    def healthy(self) -> bool:
        """The database answers and holds the table (does not prove it is writable)."""
        try:
            self.ensure_schema()
            with self.engine.connect() as connection:
                connection.execute(sa.select(predictions_table.c.id).limit(1)).all()
            return True
        except Exception:  # noqa: BLE001 - any failure means "unavailable"
            return False

    def write(self, records: Iterable[PredictionRecord]) -> int:
        """Insert the records in one transaction; returns how many were written."""
        rows = [_record_to_row(r) for r in records]
        if not rows:
            return 0
        self.ensure_schema()
        with self.engine.begin() as connection:
            connection.execute(predictions_table.insert(), rows)
        return len(rows)

    def add_feedback(self, prediction_id: str, label: str, at: datetime | None = None) -> bool:
        """Store the true label of a prediction; False when no prediction has that id."""
        self.ensure_schema()
        statement = (
            predictions_table.update()
            .where(predictions_table.c.id == prediction_id)
            .values(feedback_label=label, feedback_at=as_utc(at or datetime.now(UTC)))
        )
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount > 0

    def get(self, prediction_id: str) -> PredictionRecord | None:
        """One prediction by id, or None."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(predictions_table).where(predictions_table.c.id == prediction_id)
            ).first()
        return None if row is None else _row_to_record(row._mapping)

    def count(self) -> int:
        self.ensure_schema()
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(predictions_table)).scalar_one())

    def read_window(
        self,
        last_n: int | None = None,
        since: datetime | None = None,
        model_version: str | None = None,
    ) -> pd.DataFrame:
        """The latest ``last_n`` predictions (and/or those since ``since``), oldest first, features flattened.

        Columns: ``BASE_COLUMNS``, then the stored features (image statistics, ``emb_i``),
        ``pred_label`` (= ``label``) and ``prob_<class>`` — the schema of the reference profile.
        """
        query = sa.select(predictions_table)
        if since is not None:
            query = query.where(predictions_table.c.created_at >= as_utc(since))
        if model_version is not None:
            query = query.where(predictions_table.c.model_version == str(model_version))
        query = query.order_by(predictions_table.c.created_at.desc(), predictions_table.c.id.desc())
        if last_n is not None:
            query = query.limit(int(last_n))
        return self._frame(query, reverse=True)

    def labeled(self, since: datetime | None = None) -> pd.DataFrame:
        """Predictions that received a feedback label (since ``since`` by feedback time), oldest first."""
        query = sa.select(predictions_table).where(predictions_table.c.feedback_label.is_not(None))
        if since is not None:
            query = query.where(predictions_table.c.feedback_at >= as_utc(since))
        query = query.order_by(predictions_table.c.created_at, predictions_table.c.id)
        return self._frame(query, reverse=False)

    def _frame(self, query: sa.Select, reverse: bool) -> pd.DataFrame:
        self.ensure_schema()
        with self.engine.connect() as connection:
            rows = [row._mapping for row in connection.execute(query)]
        if reverse:
            rows.reverse()
        return flatten_rows(rows)

    def dispose(self) -> None:
        self.engine.dispose()


def flatten_rows(rows: list[Any]) -> pd.DataFrame:
    """Table rows → one flat frame: base columns, features, ``pred_label``, ``prob_<class>``."""
    if not rows:
        return pd.DataFrame(columns=[*BASE_COLUMNS, *IMAGE_STAT_COLUMNS, LABEL_COLUMN])
    flat = []
    for row in rows:
        item = {name: row[name] for name in BASE_COLUMNS}
        item.update(json.loads(row["features"]))
        item[LABEL_COLUMN] = row["label"]
        item.update({f"{PROBABILITY_PREFIX}{c}": p for c, p in json.loads(row["probabilities"]).items()})
        flat.append(item)
    frame = pd.DataFrame(flat)
    embedding = sorted((c for c in frame.columns if c.startswith(EMBEDDING_PREFIX)), key=_suffix_number)
    known = {*BASE_COLUMNS, *IMAGE_STAT_COLUMNS, *embedding, LABEL_COLUMN}
    other = [c for c in frame.columns if c not in known and not c.startswith(PROBABILITY_PREFIX)]
    probabilities = [c for c in frame.columns if c.startswith(PROBABILITY_PREFIX)]
    stats = [c for c in IMAGE_STAT_COLUMNS if c in frame.columns]
    frame = frame[[*BASE_COLUMNS, *stats, *embedding, *other, LABEL_COLUMN, *probabilities]]
    for column in ("created_at", "feedback_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _suffix_number(column: str) -> int:
    suffix = column[len(EMBEDDING_PREFIX) :]
    return int(suffix) if suffix.isdigit() else 1 << 30


def _record_to_row(record: PredictionRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "created_at": as_utc(record.created_at),
        "model_name": record.model_name,
        "model_version": str(record.model_version),
        "label": record.label,
        "confidence": float(record.confidence),
        "probabilities": json.dumps({k: float(v) for k, v in record.probabilities.items()}),
        "features": json.dumps({k: float(v) for k, v in record.features.items()}),
        "image_path": record.image_path,
        "source": record.source,
        "feedback_label": record.feedback_label,
        "feedback_at": as_utc(record.feedback_at) if record.feedback_at else None,
    }


def _row_to_record(row: Any) -> PredictionRecord:
    return PredictionRecord(
        id=row["id"],
        created_at=row["created_at"],
        model_name=row["model_name"],
        model_version=row["model_version"],
        label=row["label"],
        confidence=row["confidence"],
        probabilities=json.loads(row["probabilities"]),
        features=json.loads(row["features"]),
        image_path=row["image_path"],
        source=row["source"],
        feedback_label=row["feedback_label"],
        feedback_at=row["feedback_at"],
    )


# --- building records ------------------------------------------------------------------------------


def image_file(image_dir: Path, prediction_id: str, created_at: datetime) -> Path:
    """Where the input of a prediction is kept: ``<image_dir>/<YYYY-MM-DD>/<id>.png`` (UTC day)."""
    return image_dir / as_utc(created_at).strftime("%Y-%m-%d") / f"{prediction_id}.png"


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a canonical uint8 image (H×W or H×W×C) as PNG, atomically (a partial file never has the name).

    Encoded in memory and written with plain file calls: this runs once per logged prediction.
    """
    from PIL import Image

    array = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    encoded = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(encoded, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = f"{path}.part"
    with open(partial, "wb") as file:
        file.write(encoded.getbuffer())
    os.replace(partial, path)


@dataclass
class PendingPredictions:
    """Answered predictions waiting to be logged: everything needed to build their records later."""

    ids: list[str]
    created_at: datetime
    model_name: str
    model_version: str
    classes: list[str]
    reduction: dict[str, Any] | None
    images: list[np.ndarray]
    probabilities: np.ndarray  # N×C
    embeddings: np.ndarray  # N×D
    source: str = "rest"


def prediction_features(
    images: list[np.ndarray], embeddings: np.ndarray, reduction: dict[str, Any] | None
) -> list[dict[str, float]]:
    """Per image: ``features.image_statistics`` plus the embedding reduced by the version's PCA (``emb_i``).

    The same functions and column names as ``features.feature_frame`` (the reference profile), without
    building a DataFrame per log entry.
    """
    rows = image_statistics_many(images)
    if reduction is not None and rows:
        reduced = reduce_embeddings(np.asarray(embeddings).reshape(len(images), -1), reduction)
        names = embedding_columns(reduction)
        for row, values in zip(rows, reduced.reshape(len(images), len(names)), strict=True):
            row.update(zip(names, values.tolist(), strict=True))
    return rows


def build_records(pending: PendingPredictions, image_paths: list[str | None]) -> list[PredictionRecord]:
    """One record per answered prediction, with its drift features (``prediction_features``)."""
    features = prediction_features(pending.images, pending.embeddings, pending.reduction)
    probabilities = np.asarray(pending.probabilities, dtype=np.float64)
    best = probabilities.argmax(axis=1) if len(probabilities) else []
    return [
        PredictionRecord(
            id=prediction_id,
            created_at=pending.created_at,
            model_name=pending.model_name,
            model_version=str(pending.model_version),
            label=pending.classes[best[i]],
            confidence=float(probabilities[i, best[i]]),
            probabilities=dict(zip(pending.classes, probabilities[i].tolist(), strict=True)),
            features=features[i],
            image_path=image_paths[i],
            source=pending.source,
        )
        for i, prediction_id in enumerate(pending.ids)
    ]


# --- the background writer -------------------------------------------------------------------------


@dataclass
class WriterStatus:
    state: str  # "ok" | "unavailable"
    written: int = 0  # rows written
    failed: int = 0  # rows lost because the database refused them
    dropped: int = 0  # rows dropped because the queue was full
    image_failures: int = 0  # images that could not be stored (their rows have no image_path)
    queued: int = 0  # predictions waiting to be written
    last_error: str | None = None
    last_error_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Counters:
    written: int = 0
    failed: int = 0
    dropped: int = 0
    image_failures: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    last_ok: bool = True
    pending: set[str] = field(default_factory=set)  # prediction ids not yet handled


class PredictionLogWriter:
    """Logs predictions off the request path: ``submit`` never blocks; one daemon thread writes.

    ``state`` is ``"unavailable"`` while the last attempt to reach the database failed (a startup probe
    or a write); a later successful write (or, before any write, a successful probe) makes it ``"ok"``.
    """

    def __init__(
        self,
        log: PredictionLog | None,
        image_dir: Path | None,
        max_queue: int = 10_000,
        max_rows_per_write: int = 512,
        linger_seconds: float = 0.05,
        probe_seconds: float = 5.0,
        init_error: str | None = None,
        requests: Any = None,
    ) -> None:
        self.log = log
        self.image_dir = image_dir
        self.max_rows_per_write = max_rows_per_write
        self.linger_seconds = linger_seconds
        self.probe_seconds = probe_seconds
        # Any queue with get(timeout)/get_nowait/put raising queue.Empty/Full: a multiprocessing.Queue in
        # ``predlog_process``, which runs this same loop in a child process.
        self._queue = requests if requests is not None else queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._any_write = False
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        if log is None:
            self._fail(init_error or "no prediction log configured")

    # -- lifecycle --

    def start(self) -> None:
        """Probe the database and start the writer thread."""
        self.probe()
        self._thread = threading.Thread(target=self.run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def probe(self) -> None:
        """Mark the log unavailable now if the database does not answer (before any write tells)."""
        if self.log is not None and not self.log.healthy():
            self._fail(f"cannot reach the prediction log at {self.log!r}")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``) and stop the thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        with suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(timeout=timeout)
        self._thread = None

    # -- producer side --

    def submit(self, pending: PendingPredictions) -> bool:
        """Queue answered predictions for logging; False (and counted as dropped) when the queue is full."""
        with self._lock:
            self._counters.pending.update(pending.ids)
        try:
            self._queue.put_nowait(pending)
            return True
        except queue.Full:
            with self._lock:
                self._counters.dropped += len(pending.ids)
                self._counters.pending.difference_update(pending.ids)
            return False

    def is_pending(self, prediction_id: str) -> bool:
        with self._lock:
            return prediction_id in self._counters.pending

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has been handled; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._counters.pending and self._in_flight == 0
            if idle and self._queue.empty():
                return True
            time.sleep(0.005)
        return False

    def status(self) -> WriterStatus:
        with self._lock:
            c = self._counters
            return WriterStatus(
                state="ok" if c.last_ok else "unavailable",
                written=c.written,
                failed=c.failed,
                dropped=c.dropped,
                image_failures=c.image_failures,
                queued=len(c.pending),
                last_error=c.last_error,
                last_error_at=c.last_error_at,
            )

    # -- the loop --

    def run(self, on_handled: Callable[[list[str]], None] | None = None) -> None:
        """Write what arrives until the ``None`` sentinel; ``on_handled(ids)`` after each batch, and with no
        ids after each idle probe (how ``predlog_process`` reports progress and status to its parent)."""
        while True:
            try:
                first = self._queue.get(timeout=self.probe_seconds)
            except queue.Empty:
                self._probe_if_down()
                if on_handled is not None:
                    on_handled([])
                continue
            if first is None:
                return
            batch, stop = self._collect(first)
            with self._lock:
                self._in_flight = len(batch)
            try:
                self._write(batch)
            finally:
                with self._lock:
                    self._in_flight = 0
                    for pending in batch:
                        self._counters.pending.difference_update(pending.ids)
            if on_handled is not None:
                on_handled([i for pending in batch for i in pending.ids])
            if stop:
                return

    def _collect(self, first: PendingPredictions) -> tuple[list[PendingPredictions], bool]:
        """Gather up to ``max_rows_per_write`` rows, lingering briefly so one commit carries many."""
        batch = [first]
        rows = len(first.ids)
        deadline = time.monotonic() + self.linger_seconds
        while rows < self.max_rows_per_write:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            rows += len(item.ids)
        return batch, False

    def _write(self, batch: list[PendingPredictions]) -> None:
        records: list[PredictionRecord] = []
        for pending in batch:
            try:
                records.extend(build_records(pending, self._store_images(pending)))
            except Exception as error:  # noqa: BLE001 - a bad row must not stop the writer
                log.exception("could not build prediction records")
                self._fail(f"features: {error}", rows=len(pending.ids), db_down=False)
        if not records:
            return
        if self.log is None:
            self._fail("no prediction log configured", rows=len(records))
            return
        try:
            self.log.write(records)
        except Exception as error:  # noqa: BLE001 - the database being down must not stop serving
            log.warning("prediction log write failed (%d rows lost): %s", len(records), error)
            self._fail(str(error).splitlines()[0], rows=len(records))
            return
        with self._lock:
            self._counters.written += len(records)
            self._counters.last_ok = True
            self._any_write = True

    def _store_images(self, pending: PendingPredictions) -> list[str | None]:
        if self.image_dir is None:
            return [None] * len(pending.ids)
        paths: list[str | None] = []
        for prediction_id, image in zip(pending.ids, pending.images, strict=True):
            path = image_file(self.image_dir, prediction_id, pending.created_at)
            try:
                save_png(image, path)
                paths.append(str(path))
            except Exception as error:  # noqa: BLE001 - keep the row without its image
                log.warning("could not store input image %s: %s", path, error)
                with self._lock:
                    self._counters.image_failures += 1
                paths.append(None)
        return paths

    def _probe_if_down(self) -> None:
        with self._lock:
            down_before_any_write = not self._counters.last_ok and not self._any_write
        if down_before_any_write and self.log is not None and self.log.healthy():
            with self._lock:
                self._counters.last_ok = True

    def _fail(self, message: str, rows: int = 0, db_down: bool = True) -> None:
        with self._lock:
            c = self._counters
            c.failed += rows
            c.last_error = message
            c.last_error_at = datetime.now(UTC).isoformat()
            if db_down:
                c.last_ok = False
