"""The prediction-log writer: serving never writes on the request path.

``PredictionLogWriter`` takes answered predictions from a bounded queue in a background thread (or,
through ``writer_process``, in a child process), computes their features, stores the input images as
PNG (named by prediction id) and writes the rows. A database that is down costs the rows (counted and
reported by ``status()``), never the answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionloop.contracts import PredictionRecord
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import PendingPredictions, build_records, image_file, save_png

logger = logging.getLogger(__name__)



@dataclass
class WriterStatus:
    """What ``/health`` reports about the prediction log: rows written, lost and waiting, and the last error."""

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


class WriterQueue:
    """The producer side both writers share: ``submit`` never blocks, and the ids not yet handled are known.

    ``requests`` is any queue whose ``put_nowait`` raises ``queue.Full``: a ``queue.Queue`` for the writer
    thread, a ``multiprocessing`` queue for the writer process (``writer_process``).
    """

    def __init__(self, requests: Any) -> None:
        self._requests = requests
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # prediction ids submitted and not yet handled
        self._dropped = 0  # predictions refused because the queue was full

    def submit(self, pending: PendingPredictions) -> bool:
        """Queue answered predictions for logging; False (and counted as dropped) when the queue is full."""
        with self._lock:
            self._pending.update(pending.ids)
        try:
            self._requests.put_nowait(pending)
            return True
        except queue.Full:
            with self._lock:
                self._dropped += len(pending.ids)
                self._pending.difference_update(pending.ids)
            return False

    def is_pending(self, prediction_id: str) -> bool:
        """Submitted but not yet written: feedback on it is early, not for an unknown id."""
        with self._lock:
            return prediction_id in self._pending


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
        init_error: str | None = None,
        requests: Any = None,
    ) -> None:
        self.log = log
        self.image_dir = image_dir
        # ``requests``: the multiprocessing queue in ``writer_process``, which runs this same loop in a child.
        super().__init__(requests if requests is not None else queue.Queue(maxsize=max_queue))
        self._totals = WriterStatus(state="ok")  # the counters; status() fills in state and queued
        self._last_ok = True
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
        """Mark the log unavailable now if the database cannot be used (before any write tells)."""
        problem = self.log.problem() if self.log is not None else None
        if problem is not None:
            self._fail(f"cannot use the prediction log at {self.log!r}: {problem}")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``) and stop the thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        with suppress(queue.Full):
            self._requests.put(None, timeout=1.0)
        self._thread.join(timeout=timeout)
        self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has been handled; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._pending and self._in_flight == 0
            if idle and self._requests.empty():
                return True
            time.sleep(0.005)
        return False

    def status(self) -> WriterStatus:
        """A snapshot of the counters, for ``/health``."""
        with self._lock:
            return replace(
                self._totals,
                state="ok" if self._last_ok else "unavailable",
                dropped=self._dropped,
                queued=len(self._pending),
            )

    # -- the loop --

    def run(self, on_handled: Callable[[list[str]], None] | None = None) -> None:
        """Write what arrives until the ``None`` sentinel; ``on_handled(ids)`` after each batch, and with no
        ids after each idle probe (how ``writer_process`` reports progress and status to its parent)."""
        while True:
            try:
                first = self._requests.get(timeout=self.probe_seconds)
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
                        self._pending.difference_update(pending.ids)
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
                item = self._requests.get(timeout=remaining) if remaining > 0 else self._requests.get_nowait()
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
                logger.exception("could not build prediction records")
                self._fail(f"features: {error}", rows=len(pending.ids), db_down=False)
        if not records:
            return
        if self.log is None:
            self._fail("no prediction log configured", rows=len(records))
            return
        try:
            self.log.write(records)
        except Exception as error:  # noqa: BLE001 - the database being down must not stop serving
            logger.warning("prediction log write failed (%d rows lost): %s", len(records), error)
            self._fail(str(error).splitlines()[0], rows=len(records))
            return
        with self._lock:
            self._totals.written += len(records)
            self._last_ok = True
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
