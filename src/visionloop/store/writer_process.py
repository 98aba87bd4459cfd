"""The prediction-log writer in a child process, so its work does not compete with serving for the GIL.

The server answers from one Python interpreter: the event loop, the micro-batcher and a writer thread
take turns on its GIL, and the writer's work (image statistics, embedding reduction, PNG files, the
database insert) costs about as much per request as the forward pass (``benchmarks/README.md``).
``ProcessLogWriter`` runs the very same ``PredictionLogWriter.run`` loop in a spawned process and keeps
its interface (``submit`` never blocks, ``is_pending``, ``flush``, ``status``, ``log`` for feedback),
so the app does not care which one it has. The child reports after every batch (the ids it handled
and its status) and after every idle probe; the parent keeps the ids in flight and what it dropped.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from visionloop.store.predlog import PredictionLog
from visionloop.store.writer import PredictionLogWriter, WriterQueue, WriterStatus


def _child(
    url: str | None, image_dir: Path | None, max_queue: int, init_error: str | None, requests: Any, reports: Any
) -> None:
    log = None
    if url is not None:
        try:
            log = PredictionLog(url)
        except Exception as error:  # noqa: BLE001 - reported as status, like the in-process writer
            init_error = str(error)
    writer = PredictionLogWriter(log, image_dir, max_queue=max_queue, init_error=init_error, requests=requests)
    writer.probe()
    reports.put(([], writer.status()))
    writer.run(on_handled=lambda ids: reports.put((ids, writer.status())))
    if log is not None:
        log.dispose()
    reports.put(None)


class ProcessLogWriter(WriterQueue):
    """``PredictionLogWriter``'s interface, with the writing done in a child process."""

    def __init__(
        self, log: PredictionLog | None, image_dir: Path | None, *, max_queue: int, init_error: str | None = None
    ) -> None:
        self.log = log  # this process's handle: /feedback and the labeling pages use it
        self.image_dir = image_dir
        self._max_queue = max_queue
        self._init_error = init_error
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        super().__init__(self._context.Queue(maxsize=max_queue))
        self._reports = self._context.Queue()
        self._child_status = WriterStatus(state="unavailable", last_error="writer process not started")
        self._process: Any = None
        self._reader: threading.Thread | None = None
        self._first_report = threading.Event()

    def start(self, timeout: float = 60.0) -> None:
        """Start the child and wait for its first report (its probe of the database)."""
        url = self.log.url if self.log is not None else None
        self._process = self._context.Process(
            target=_child, args=(url, self.image_dir, self._max_queue, self._init_error, self._requests, self._reports),
            name="prediction-log-writer", daemon=True,
        )
        self._process.start()
        self._reader = threading.Thread(target=self._read_reports, name="prediction-log-reports", daemon=True)
        self._reader.start()
        self._first_report.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then stop the child."""
        if self._process is None:
            return
        self.flush(timeout)
        with contextlib.suppress(queue.Full):
            self._requests.put(None, timeout=1.0)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(1.0)
        # This process holds the queue's read end too, so a feeder thread with bytes the child never read
        # would block on the full pipe forever and hang interpreter exit; what is unread is lost either way.
        self._requests.cancel_join_thread()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        self._requests.close()
        self._process = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the child has handled everything submitted so far; False on timeout or a dead child."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            if not self._alive():
                return False
            time.sleep(0.005)
        return False

    def status(self) -> WriterStatus:
        """A snapshot of the counters, for ``/health``."""
        with self._lock:
            child, dropped, queued = self._child_status, self._dropped, len(self._pending)
        status = replace(child, dropped=child.dropped + dropped, queued=queued)
        if self._process is not None and not self._alive():
            status = replace(status, state="unavailable",
                             last_error=f"the prediction-log writer process exited (code {self._process.exitcode})")
        return status

    def _alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def _read_reports(self) -> None:
        while True:
            try:
                report = self._reports.get(timeout=1.0)
            except queue.Empty:
                if not self._alive():
                    self._first_report.set()
                    return
                continue
            if report is None:
                return
            ids, child_status = report
            with self._lock:
                self._pending.difference_update(ids)
                self._child_status = child_status
            self._first_report.set()
