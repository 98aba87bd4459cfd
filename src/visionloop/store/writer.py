"""The prediction-log writer: serving never writes on the request path, and never loses what it answered.

``PredictionLogWriter`` takes answered predictions from a queue in a background thread (or, through
``writer_process``, in a child process), computes their features, stores the input images as PNG
(named by prediction id) and writes the rows. A database that is down costs the rows (counted and
reported by ``status()``), never the answer.

Every entry is kept by the serving process (``WriterQueue``) until the writer acknowledges it: a writer
process that dies is restarted and given again what it had not acknowledged, and at a stop what is
still unwritten after ``serving.drain_seconds`` is spilled to disk (``spool``) and replayed at the next
start. Feedback for a prediction still waiting is queued behind it (``submit_feedback``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionloop.contracts import PredictionRecord
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import (
    LogEntry,
    PendingFeedback,
    PendingPredictions,
    PendingShadow,
    build_records,
    image_file,
    save_png,
)
from visionloop.store.shadowlog import shadow_rows, write_shadow
from visionloop.store.writer_queue import WriterQueue, WriterStatus

logger = logging.getLogger(__name__)


class PredictionLogWriter(WriterQueue):
    """Logs predictions off the request path: ``submit`` never blocks; one daemon thread writes.

    ``state`` is ``"unavailable"`` while the last attempt to reach the database failed (a startup probe
    or a write); a later successful write (or, before any write, a successful probe) makes it ``"ok"``.
    """

    max_rows_per_write = 512  # one INSERT carries at most this many rows
    linger_seconds = 0.05  # how long a write waits for more rows to join it
    probe_seconds = 5.0  # how often an idle writer whose database is down tries it again

    def __init__(
        self,
        log: PredictionLog | None,
        image_dir: Path | None,
        *,
        max_queue: int,
        spool_dir: Path | None = None,
        init_error: str | None = None,
        requests: Any = None,
    ) -> None:
        self.log = log
        self.image_dir = image_dir
        # ``requests``: the queue ``writer_process`` gives the same loop in its child.
        super().__init__(requests if requests is not None else queue.Queue(), max_queue=max_queue,
                         spool_dir=spool_dir)
        self._totals = WriterStatus(state="ok")  # the counters; status() fills in state and queued
        self._last_ok = True
        self._any_write = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if log is None:
            self._fail(init_error or "no prediction log configured")

    # -- lifecycle --

    def start(self) -> None:
        """Probe the database, queue what an earlier stop spilled, and start the writer thread."""
        self.probe()
        self._replay(self.log)
        self._thread = threading.Thread(target=self.run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def probe(self) -> None:
        """Mark the log unavailable now if the database cannot be used (before any write tells)."""
        problem = self.log.problem() if self.log is not None else None
        if problem is not None:
            self._fail(f"cannot use the prediction log at {self.log!r}: {problem}")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued for up to ``timeout`` seconds, stop the thread, spill what is left."""
        if self._thread is None:
            return
        drained = self.flush(timeout)
        self._closing.set()  # not drained: it stops after the batch it is writing, the rest is spilled
        self._requests.put_nowait(None)
        self._thread.join(timeout=5.0 if drained else 0.0)
        self._thread = None
        self._spill()

    def status(self) -> WriterStatus:
        """A snapshot of the counters, for ``/health``."""
        with self._lock:
            return self._queue_counts(replace(self._totals, state="ok" if self._last_ok else "unavailable"))

    # -- the loop --

    def run(self, on_handled: Callable[[list[int]], None] | None = None) -> None:
        """Write what arrives until the ``None`` sentinel (or ``close``).

        ``on_handled(seqs)`` after each batch, and with none after each idle probe: how ``writer_process``
        reports progress and status to its parent; by default the entries are acknowledged here.
        """
        handled = on_handled or self._acknowledge
        while not self._closing.is_set():
            try:
                first = self._requests.get(timeout=self.probe_seconds)
            except queue.Empty:
                self._probe_if_down()
                handled([])
                continue
            if first is None or self._closing.is_set():
                return
            batch, stop = self._collect(first)
            try:
                self._write([entry for _, entry in batch])
            finally:
                handled([seq for seq, _ in batch])
            if stop:
                return

    def _collect(self, first: tuple[int, LogEntry]) -> tuple[list[tuple[int, LogEntry]], bool]:
        """Gather up to ``max_rows_per_write`` rows, lingering briefly so one commit carries many."""
        batch = [first]
        rows = _rows(first[1])
        deadline = time.monotonic() + self.linger_seconds
        while rows < self.max_rows_per_write:
            remaining = deadline - time.monotonic()
            try:
                item = self._requests.get(timeout=remaining) if remaining > 0 else self._requests.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            rows += _rows(item[1])
        return batch, False

    def _write(self, batch: list[LogEntry]) -> None:
        """The predictions' rows in one insert, then the labels queued behind them, in order."""
        records: list[PredictionRecord] = []
        for pending in batch:
            if isinstance(pending, PendingPredictions):
                try:
                    records.extend(build_records(pending, self._store_images(pending)))
                except Exception as error:  # noqa: BLE001 - a bad row must not stop the writer
                    logger.exception("could not build prediction records")
                    self._fail(f"features: {error}", rows=len(pending.ids), db_down=False)
        if records:
            self._insert(records)
        shadows = [entry for entry in batch if isinstance(entry, PendingShadow)]
        if shadows:
            self._insert_shadow(shadows)
        for feedback in (entry for entry in batch if isinstance(entry, PendingFeedback)):
            self._apply_feedback(feedback)  # its prediction is in this batch or an earlier one

    def _insert(self, records: list[PredictionRecord]) -> None:
        if self.log is None:
            self._fail("no prediction log configured", rows=len(records))
            return
        try:
            written = self.log.write(records)
        except Exception as error:  # noqa: BLE001 - the database being down must not stop serving
            logger.warning("prediction log write failed (%d rows lost): %s", len(records), error)
            self._fail(str(error).splitlines()[0], rows=len(records))
            return
        with self._lock:
            self._totals.written += written
            self._last_ok = True
            self._any_write = True

    def _insert_shadow(self, entries: list[PendingShadow]) -> None:
        """A challenger's shadow rows (``store.shadowlog``), counted apart from the champion's."""
        count = sum(len(entry.ids) for entry in entries)
        if self.log is None:
            self._fail("no prediction log configured", rows=count)
            return
        try:
            written = write_shadow(self.log.engine, [row for entry in entries for row in shadow_rows(entry)])
        except Exception as error:  # noqa: BLE001 - as for the champion's rows: counted, never raised
            logger.warning("shadow log write failed (%d rows lost): %s", count, error)
            self._fail(f"shadow: {str(error).splitlines()[0]}", rows=count)
            return
        with self._lock:
            self._totals.shadow_written += written

    def _apply_feedback(self, feedback: PendingFeedback) -> None:
        try:
            found = self.log is not None and self.log.add_feedback(feedback.prediction_id, feedback.label, feedback.at)
        except Exception as error:  # noqa: BLE001 - as for rows: counted, never raised
            found = False
            logger.warning("queued feedback for %s not stored: %s", feedback.prediction_id, error)
        if not found:
            self._fail(f"queued feedback for {feedback.prediction_id} not stored", db_down=False)

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
                logger.warning("could not store input image %s: %s", path, error)
                with self._lock:
                    self._totals.image_failures += 1
                paths.append(None)
        return paths

    def _probe_if_down(self) -> None:
        with self._lock:
            down_before_any_write = not self._last_ok and not self._any_write
        if down_before_any_write and self.log is not None and self.log.problem() is None:
            with self._lock:
                self._last_ok = True

    def _fail(self, message: str, rows: int = 0, db_down: bool = True) -> None:
        with self._lock:
            self._totals.failed += rows
            self._totals.last_error = message
            self._totals.last_error_at = datetime.now(UTC).isoformat()
            if db_down:
                self._last_ok = False


def _rows(entry: LogEntry) -> int:
    return len(entry.ids) if isinstance(entry, PendingPredictions | PendingShadow) else 1
