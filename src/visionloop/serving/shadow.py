"""Shadow scoring: the challenger predicts a share of live requests, after the champion's answer went out.

On ``serving.shadow.share`` of ``/predict`` requests (sampled per request), once the response is sent (a
background task of the route), the request's decoded images and the champion's ``BatchResult`` are offered
to ``ShadowScorer``: a bounded queue (``serving.shadow.max_queue``) and one thread of its own, at a lower
scheduling priority than the serving threads, that batches what waits (up to ``serving.max_batch`` images),
reads the challenger once per batch (``challenger.Challenger``), runs one forward and hands one
``records.PendingShadow`` per champion batch to the prediction-log writer (``submit_shadow``). So:

* the client's answer never waits for the challenger and never fails because of it: a full queue skips the
  request, a challenger that raises costs only its shadow rows (both counted in ``stats``);
* nothing new is written on the request path: the rows go through the log writer's queue (kept until written,
  spilled at a stop, replayed), and the writer gives them at most half of its queue, so the champion's own
  rows keep their place;
* the latency compared is each model's forward time per image of the batch it ran in
  (``BatchResult.seconds_per_image`` for the champion).

A challenger that is the champion's version, or that expects another channel count than the images were
decoded for, is not scored (``stats.incompatible``).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from visionloop.store.records import PendingShadow

if TYPE_CHECKING:
    from visionloop.models.bundle import ServableModel
    from visionloop.serving.batcher import BatchResult
    from visionloop.serving.challenger import Challenger

log = logging.getLogger(__name__)

NICENESS = 10  # added to the shadow thread's nice value: the event loop and the batcher come first


@dataclass
class ShadowStats:
    """What shadow scoring did since start (``GET /health``'s ``shadow``)."""

    offered: int = 0  # requests sampled and queued for the challenger
    skipped: int = 0  # sampled requests not scored: the shadow queue was full
    scored: int = 0  # images the challenger predicted
    failed: int = 0  # images of batches the challenger failed on
    incompatible: int = 0  # images not scored: the challenger is the champion's version or wants other channels
    not_logged: int = 0  # scored images whose rows the log did not take (its queue half full)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Offer:
    images: list[np.ndarray]
    result: BatchResult
    created_at: datetime


class ShadowScorer:
    """The challenger's shadow: ``wants`` samples a request, ``offer`` queues it, a thread scores and logs."""

    def __init__(
        self,
        challenger: Challenger,
        submit: Callable[[PendingShadow], bool],
        *,
        share: float,
        max_queue: int,
        max_batch: int,
        seed: int | None = None,
    ) -> None:
        self.challenger = challenger
        self.submit = submit
        self.share = share
        self.max_batch = max_batch
        self._queue: queue.Queue[_Offer | None] = queue.Queue(maxsize=max_queue)
        self._random = random.Random(seed)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats = ShadowStats()

    def wants(self) -> bool:
        """Whether this request is shadow-scored: a challenger is loaded and the draw falls in the share."""
        return self.share > 0 and self.challenger.current() is not None and self._random.random() < self.share

    async def offer(self, images: list[np.ndarray], result: BatchResult) -> None:
        """Queue an answered request for the challenger; never blocks (a full queue skips it, counted).

        ``async`` so that a route's background task runs it on the event loop, without a thread-pool hop.
        """
        try:
            self._queue.put_nowait(_Offer(images, result, datetime.now(UTC)))
        except queue.Full:
            self._count(skipped=1)
            return
        self._count(offered=1)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop once what waits is scored (at most ``max_queue`` requests, for up to ``timeout`` s; a full queue drops
        its oldest requests to make room for the stop): their rows reach the log before it closes."""
        if self._thread is None:
            return
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with suppress(queue.Empty):
                    self._queue.get_nowait()
                    self._count(skipped=1)
        self._thread.join(timeout=timeout)
        self._thread = None

    def status(self) -> dict[str, Any]:
        model = self.challenger.current()
        with self._lock:
            counts = self.stats.to_dict()
        return {"share": self.share, "challenger_version": str(model.version) if model else None,
                "queued": self._queue.qsize(), **counts}

    # -- the thread --

    def _run(self) -> None:
        _lower_priority()
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            try:
                self._score(batch)
            except Exception:  # noqa: BLE001 - the shadow must outlive anything one batch does
                log.exception("shadow scoring failed for a batch of %d requests", len(batch))
            if stop:
                return

    def _collect(self, first: _Offer) -> tuple[list[_Offer], bool]:
        """What waits now, up to ``max_batch`` images (no lingering: the shadow takes what is there)."""
        batch, size = [first], len(first.images)
        while size < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            size += len(item.images)
        return batch, False

    def _score(self, batch: list[_Offer]) -> None:
        """One challenger forward for ``batch``; one log entry per champion batch (all of them, usually one)."""
        challenger = self.challenger.current()  # read once, like the batcher reads the champion
        usable: list[_Offer] = []
        for item in batch:
            if _comparable(challenger, item.result.model):
                usable.append(item)
            else:
                self._count(incompatible=len(item.images))
        if challenger is None or not usable:
            return
        images = [image for item in usable for image in item.images]
        started = time.perf_counter()
        try:
            predictions = challenger.predict(images)
        except Exception as error:  # noqa: BLE001 - a failing challenger costs its shadow rows, nothing else
            log.warning("challenger v%s failed on %d shadow images: %s", challenger.version, len(images), error)
            self._count(failed=len(images))
            return
        per_image = (time.perf_counter() - started) / len(images)
        self._count(scored=len(images))
        probabilities = np.asarray(predictions.probabilities)
        embeddings = np.asarray(predictions.embeddings).reshape(len(images), -1)
        start = 0
        for item in usable:
            end = start + len(item.images)
            self._log(item, challenger, probabilities[start:end], embeddings[start:end], per_image)
            start = end

    def _log(self, item: _Offer, challenger: ServableModel, probabilities: np.ndarray, embeddings: np.ndarray,
             per_image: float) -> None:
        champion, result = item.result.model, item.result
        best = np.asarray(result.probabilities).argmax(axis=1)
        entry = PendingShadow(
            ids=list(result.prediction_ids),
            created_at=item.created_at,
            model_name=champion.name,
            champion_version=str(champion.version),
            champion_labels=[champion.classes[int(k)] for k in best],
            champion_confidences=[float(result.probabilities[i, k]) for i, k in enumerate(best)],
            champion_ms=[1000.0 * result.seconds_per_image] * len(best),
            challenger_version=str(challenger.version),
            challenger_classes=list(challenger.classes),
            reduction=challenger.reduction,
            probabilities=probabilities,
            embeddings=embeddings,
            challenger_ms=1000.0 * per_image,
        )
        try:
            taken = self.submit(entry)
        except Exception:  # noqa: BLE001 - the log being unusable costs the rows, not the thread
            log.exception("could not hand %d shadow predictions to the log", len(entry.ids))
            taken = False
        if not taken:
            self._count(not_logged=len(entry.ids))

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)


def _comparable(challenger: ServableModel | None, champion: ServableModel) -> bool:
    """A challenger worth scoring beside ``champion``: another version, on images of its channel count."""
    return (challenger is not None and str(challenger.version) != str(champion.version)
            and challenger.channels == champion.channels)


def _lower_priority() -> None:
    """Lower this thread's scheduling priority (Linux: niceness is per thread); elsewhere nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    except (AttributeError, OSError) as error:
        log.debug("shadow thread keeps its priority: %s", error)
