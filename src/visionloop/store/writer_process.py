"""The prediction-log writer in a supervised child process, so its work does not compete with serving for the GIL.

The server answers from one Python interpreter: the event loop, the micro-batcher and a writer thread
take turns on its GIL, and the writer's work (image statistics, embedding reduction, PNG files, the
database insert) costs about as much per request as the forward pass (``benchmarks/README.md``).
``ProcessLogWriter`` runs the very same ``PredictionLogWriter.run`` loop in a spawned process and keeps
its interface (``submit`` never blocks, ``submit_feedback``, ``is_pending``, ``flush``, ``status``,
``log`` for feedback), so the app does not care which one it has.

The child reports after every batch (the sequence numbers it handled, and its status) and after every
idle probe. The parent keeps every entry until it is reported (``WriterQueue``) and watches the child: one
that dies (the OOM killer, a ``kill -9``) is replaced by a new child on new queues, given everything not
yet reported, in order; ``status().state`` is ``"degraded"`` until the new one reports. The child ignores
SIGINT and SIGTERM — a Ctrl-C or ``visionloop down`` reaches the whole process group, and the parent
decides when its writer stops (``close``: drain, then spill) — and exits by itself when its parent is gone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from visionloop.store.predlog import PredictionLog
from visionloop.store.writer import PredictionLogWriter
from visionloop.store.writer_queue import WriterQueue, WriterStatus

logger = logging.getLogger(__name__)


def _child(url: str | None, image_dir: Path | None, init_error: str | None, requests: Any, reports: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    log = None
    if url is not None:
        try:
            log = PredictionLog(url)
        except Exception as error:  # noqa: BLE001 - reported as status, like the in-process writer
            init_error = str(error)
    writer = PredictionLogWriter(log, image_dir, max_queue=1, init_error=init_error, requests=requests)

    def report(seqs: list[int]) -> None:
        if not seqs and parent is not None and not parent.is_alive():
            raise SystemExit(0)  # an orphan: nobody reads the reports any more
        reports.put((seqs, writer.status()))

    writer.probe()
    report([])
    writer.run(on_handled=report)
    if log is not None:
        log.dispose()
    reports.put(None)


@dataclass
class _Child:
    """One writer process and the two queues it alone uses (a dead child may leave a queue unusable)."""

    process: Any
    requests: Any
    reports: Any
    started: float = field(default_factory=time.monotonic)
    progressed: bool = False  # reported a handled entry


class ProcessLogWriter(WriterQueue):
    """``PredictionLogWriter``'s interface, with the writing done in a supervised child process."""

    report_poll_seconds = 0.2  # how soon the death of the child is noticed
    max_restart_delay = 30.0  # a child that keeps dying at once is restarted at most this rarely
    deaths_per_entry = 3  # the oldest entry is dropped after this many deaths in a row without progress

    def __init__(
        self,
        log: PredictionLog | None,
        image_dir: Path | None,
        *,
        max_queue: int,
        spool_dir: Path | None = None,
        init_error: str | None = None,
    ) -> None:
        self.log = log  # this process's handle: /feedback and the labeling pages use it
        self.image_dir = image_dir
        self._init_error = init_error
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        super().__init__(self._context.Queue(), max_queue=max_queue, spool_dir=spool_dir)
        self._child: _Child | None = None
        self._child_status = WriterStatus(state="unavailable", last_error="writer process not started")
        self._earlier = WriterStatus(state="ok")  # the counters of children that died
        self._restarts = 0
        self._down: str | None = None  # why the log is degraded now (the child died, a new one is starting)
        self._restart_delay = 0.0
        self._deaths_without_progress = 0
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._first_report = threading.Event()

    def start(self, timeout: float = 60.0) -> None:
        """Queue what an earlier stop spilled, start the child, and wait for its first report (its probe)."""
        self._replay(self.log)
        self._child = self._spawn(self._requests)
        self._supervisor = threading.Thread(target=self._supervise, name="prediction-log-supervisor", daemon=True)
        self._supervisor.start()
        self._first_report.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued for up to ``timeout`` seconds, stop the child, and spill what is left to disk."""
        if self._child is None:
            return
        drained = self.flush(timeout)
        with self._lock:  # no child is started after this
            self._closing.set()
            child = self._child
        with contextlib.suppress(OSError, ValueError):  # a dead child's queues may be closed already
            child.requests.put_nowait(None)
        child.process.join(5.0 if drained else 0.0)  # drained: it has nothing left to do but exit
        if child.process.is_alive():
            child.process.kill()  # SIGTERM is ignored by design; what it had not reported is spilled
            child.process.join(5.0)
        if self._supervisor is not None:
            self._supervisor.join(timeout=5.0)  # it reads the last reports before it ends
        self._retire(child)
        self._child = None
        self._spill()

    def status(self) -> WriterStatus:
        """A snapshot of the counters, for ``/health``: ``degraded`` while a dead child is being replaced."""
        with self._lock:
            child, earlier = self._child_status, self._earlier
            status = self._queue_counts(replace(
                child,
                written=child.written + earlier.written,
                failed=child.failed + earlier.failed,
                image_failures=child.image_failures + earlier.image_failures,
                shadow_written=child.shadow_written + earlier.shadow_written,
                restarts=self._restarts,
            ))
            if self._down is not None:
                status = replace(status, state="degraded", last_error=self._down)
        return status

    # -- supervision --

    def _spawn(self, requests: Any) -> _Child:
        reports = self._context.Queue()
        url = self.log.url if self.log is not None else None
        process = self._context.Process(
            target=_child, args=(url, self.image_dir, self._init_error, requests, reports),
            name="prediction-log-writer", daemon=True,
        )
        process.start()
        return _Child(process, requests, reports)

    def _supervise(self) -> None:
        """Read the child's reports; replace it when it dies, until ``close``."""
        while True:
            child = self._child
            if child is None:
                return
            try:
                report = child.reports.get(timeout=self.report_poll_seconds)
            except (queue.Empty, OSError, ValueError, EOFError):  # nothing yet, or the queue died with the child
                if child.process.is_alive():
                    continue
                if self._closing.is_set():
                    return
                self._replace(child)
                continue
            if report is None:  # the child stopped on the sentinel: only at close
                return
            seqs, child_status = report
            self._acknowledge(seqs)
            with self._lock:
                self._child_status = child_status
                self._down = None
                if seqs:
                    child.progressed = True
                    self._deaths_without_progress = 0
            self._first_report.set()

    def _replace(self, dead: _Child) -> None:
        """A new child on new queues, given every unreported entry in order; backing off if deaths repeat."""
        code = dead.process.exitcode
        logger.error("the prediction-log writer process exited (code %s); restarting it", code)
        requests = self._context.Queue()
        with self._lock:
            self._restarts += 1
            self._down = f"the prediction-log writer process exited (code {code}); restarting"
            self._earlier = replace(self._earlier, written=self._earlier.written + self._child_status.written,
                                    failed=self._earlier.failed + self._child_status.failed,
                                    image_failures=self._earlier.image_failures + self._child_status.image_failures,
                                    shadow_written=self._earlier.shadow_written + self._child_status.shadow_written)
            self._child_status = replace(self._child_status, written=0, failed=0, image_failures=0, shadow_written=0)
            if not dead.progressed:
                self._deaths_without_progress += 1
            if self._deaths_without_progress >= self.deaths_per_entry and self._entries:
                self._drop_oldest()
            self._requests = requests
            for seq, entry in self._entries.items():  # later submits go to the new queue, after these
                requests.put_nowait((seq, entry))
        self._first_report.set()  # a start() waiting for a child that died at once returns
        quick = time.monotonic() - dead.started < 10.0 and not dead.progressed
        self._restart_delay = min(max(2 * self._restart_delay, 0.5), self.max_restart_delay) if quick else 0.0
        self._retire(dead)
        self._closing.wait(self._restart_delay)
        with self._lock:
            if not self._closing.is_set():
                self._child = self._spawn(requests)

    def _drop_oldest(self) -> None:
        """The entry the child keeps dying on (the lock is held): counted as failed, so the rest get written."""
        entry = self._forget(next(iter(self._entries)))
        lost = len(getattr(entry, "ids", []))
        logger.error("dropped a prediction-log entry (%d rows) the writer died on %d times",
                     lost, self.deaths_per_entry)
        self._earlier = replace(self._earlier, failed=self._earlier.failed + lost)
        self._deaths_without_progress = 0

    @staticmethod
    def _retire(child: _Child) -> None:
        """Let go of a stopped child's queues without waiting on them.

        This process holds the request queue's read end too, so its feeder thread, holding bytes a dead
        child never read, would block on the full pipe forever and hang interpreter exit: it is not
        joined (those entries are kept in ``_entries``, and replayed or spilled). Its pipe is left open:
        closing it would make that thread print a broken-pipe traceback into a server that goes on.
        """
        child.requests.cancel_join_thread()
        with contextlib.suppress(OSError, ValueError):
            child.reports.close()
