"""The serving side of the prediction-log writers: every entry kept until the writer acknowledges it.

Both writers (``writer.PredictionLogWriter``, a thread; ``writer_process.ProcessLogWriter``, a child
process) take entries through ``WriterQueue``. It keeps each one until the writer reports it written
(or lost to the database), which is what lets a dead writer process be given its work again, feedback
for a prediction still waiting be queued behind it, and a stop spill the unwritten entries to disk
(``spool``) for the next start to replay.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from visionloop.store import spool
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import LogEntry, PendingFeedback, PendingPredictions, PendingShadow

logger = logging.getLogger(__name__)


@dataclass
class WriterStatus:
    """What ``/health`` reports about the prediction log: rows written, lost and waiting, and the last error."""

    state: str  # "ok" | "degraded" (the writer process is being restarted) | "unavailable" (the database)
    written: int = 0  # rows written
    failed: int = 0  # rows lost because the database refused them
    dropped: int = 0  # rows dropped because the queue was full
    image_failures: int = 0  # images that could not be stored (their rows have no image_path)
    queued: int = 0  # predictions submitted and not yet written
    restarts: int = 0  # times the writer process died and was started again
    spooled: int = 0  # entries spilled to disk at a stop (replayed at the next start)
    replayed: int = 0  # spilled entries given to this writer at its start
    shadow_written: int = 0  # a challenger's shadow predictions written (serving.shadow)
    shadow_dropped: int = 0  # ... not queued: the log queue was half full (the champion's rows come first)
    last_error: str | None = None
    last_error_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class WriterQueue:
    """The serving side both writers share: entries kept until acknowledged, then spilled if never written.

    ``submit`` never blocks: an entry gets a sequence number, is kept in ``_entries`` and put on
    ``_requests`` as ``(seq, entry)``; the writer acknowledges sequence numbers once written (or lost
    to the database). At most ``max_queue`` entries wait; beyond that new predictions are dropped (counted).
    """

    def __init__(self, requests: Any, *, max_queue: int, spool_dir: Path | None) -> None:
        self._requests = requests
        self._max_queue = max_queue
        self._spool_dir = spool_dir
        self._lock = threading.Lock()
        self._entries: dict[int, LogEntry] = {}  # not yet acknowledged, in submission order
        self._pending: dict[str, int] = {}  # prediction id → how many unacknowledged entries carry it
        self._next_seq = 0
        self._dropped = 0
        self._shadow_dropped = 0
        self._spooled = 0
        self._replayed = 0
        self._replay_files: list[Path] = []  # deleted once every entry up to _replay_until is acknowledged
        self._replay_until = -1
        self._replay_claims: dict[Path, int] = {}  # the locks on the spool files this writer replays

    def submit(self, pending: PendingPredictions) -> bool:
        """Queue answered predictions for logging; False (and counted as dropped) when the queue is full."""
        with self._lock:
            if len(self._entries) >= self._max_queue:
                self._dropped += len(pending.ids)
                return False
            self._enqueue(pending)
        return True

    def submit_shadow(self, pending: PendingShadow) -> bool:
        """Queue a challenger's shadow predictions; False (counted) when half the queue is taken already, so shadow
        rows never cost the champion's rows their place."""
        with self._lock:
            if len(self._entries) >= self._max_queue // 2:
                self._shadow_dropped += len(pending.ids)
                return False
            self._enqueue(pending)
        return True

    def submit_feedback(self, prediction_id: str, label: str, at: datetime) -> bool:
        """Queue a label behind its prediction if that one is answered but not yet written.

        False when the prediction is not waiting (written already, or never issued): the caller updates
        the log itself. Raises ``queue.Full`` when the queue is full.
        """
        with self._lock:
            if prediction_id not in self._pending:
                return False
            if len(self._entries) >= self._max_queue:
                raise queue.Full
            self._enqueue(PendingFeedback(prediction_id, label, at))
        return True

    def is_pending(self, prediction_id: str) -> bool:
        """Submitted but not yet written: feedback on it is early, not for an unknown id."""
        with self._lock:
            return prediction_id in self._pending

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has been handled; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._entries:
                    return True
            time.sleep(0.005)
        return False

    def _enqueue(self, entry: LogEntry) -> None:
        """Keep ``entry`` and hand it to the writer (the lock is held: the queue's order is the sequence's)."""
        seq = self._next_seq
        self._next_seq += 1
        self._entries[seq] = entry
        if isinstance(entry, PendingPredictions):
            for prediction_id in entry.ids:
                self._pending[prediction_id] = self._pending.get(prediction_id, 0) + 1
        self._requests.put_nowait((seq, entry))

    def _acknowledge(self, seqs: list[int]) -> None:
        """The writer is done with these entries; a replayed spool file goes once all of its entries are."""
        with self._lock:
            for seq in seqs:
                self._forget(seq)
            replay_done = self._replay_files and next(iter(self._entries), self._replay_until + 1) > self._replay_until
            files, self._replay_files = (self._replay_files, []) if replay_done else ([], self._replay_files)
        for path in files:
            spool.discard(path, self._replay_claims)

    def _forget(self, seq: int) -> LogEntry | None:
        """Remove an entry and its ids from what is waiting (the lock is held)."""
        entry = self._entries.pop(seq, None)
        if isinstance(entry, PendingPredictions):
            for prediction_id in entry.ids:
                left = self._pending.pop(prediction_id, 1) - 1
                if left:
                    self._pending[prediction_id] = left
        return entry

    def _replay(self, log: PredictionLog | None) -> None:
        """Queue the entries spilled at earlier stops, before any new traffic.

        Not while the database is unusable: they would be counted as failed and their files deleted;
        they stay for a later start instead.
        """
        if self._spool_dir is None or log is None or log.problem() is not None:
            return
        loaded = spool.load(self._spool_dir, self._replay_claims)  # not the files another worker replays
        with self._lock:
            for path, entries in loaded:
                for entry in entries:
                    self._enqueue(entry)  # over max_queue if need be: these were answered already
                self._replay_files.append(path)
                self._replayed += len(entries)
            self._replay_until = self._next_seq - 1
        if loaded:
            logger.info("replaying %d spilled prediction-log entries from %s", self._replayed, self._spool_dir)

    def _spill(self) -> None:
        """At a stop: write what was never acknowledged to the spool (it replaces the files being replayed)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._pending.clear()
            files, self._replay_files = self._replay_files, []
        if entries and self._spool_dir is None:
            logger.error("%d prediction-log entries were not written and there is no spool to keep them", len(entries))
            return
        if entries:
            try:
                path = spool.spill(self._spool_dir, entries)
            except OSError as error:
                logger.error("could not spill %d prediction-log entries to %s: %s",
                             len(entries), self._spool_dir, error)
                return  # the files being replayed stay: the next start tries them again
            self._spooled += len(entries)
            logger.warning("%d prediction-log entries not written in time; kept in %s for the next start",
                           len(entries), path)
        for path in files:
            spool.discard(path, self._replay_claims)

    def _queue_counts(self, status: WriterStatus) -> WriterStatus:
        """``status`` with this side's counters (the lock is held)."""
        return replace(status, dropped=status.dropped + self._dropped, queued=len(self._pending),
                       shadow_dropped=status.shadow_dropped + self._shadow_dropped,
                       spooled=self._spooled, replayed=self._replayed)
