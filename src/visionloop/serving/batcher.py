"""Micro-batching: concurrent requests share one forward pass.

Requests put their decoded images on a queue and await a future. One worker thread takes up to
``max_batch`` images — waiting at most ``max_wait_ms`` for more, and only while other requests are
still being read (``arriving``), so a lone request pays no wait — reads the current model ONCE,
runs one forward and resolves every future of the batch. A model swapped in meanwhile answers
from the next batch on; the batch in flight keeps its reference to the old one. A request that
names the model its images were decoded for (``submit(images, model)``) is answered by that model
even when a swap happened while it waited: a new version may expect another channel count.

Each forward pass is handed to ``log`` (the prediction-log writer's non-blocking ``submit``) as ONE
``PendingPredictions`` with an id per image, before any answer goes out: one log entry per batch
instead of one per request, and an id a client sends to ``/feedback`` is already known to the writer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from visionloop.store.records import PendingPredictions

if TYPE_CHECKING:
    from visionloop.models.bundle import Predictions, ServableModel

log = logging.getLogger(__name__)

_POLL = 0.0005  # how often a waiting worker re-checks whether more requests are still arriving


class NoModelLoaded(RuntimeError):
    """No model version is loaded yet (the server is not ready)."""


class Overloaded(RuntimeError):
    """The batch queue is full."""


@dataclass
class BatchResult:
    """The answer for one request's images: the model that answered and its outputs."""

    model: ServableModel
    probabilities: np.ndarray  # N×C
    prediction_ids: list[str]  # one per image, as logged (the embeddings go to the log only)
    seconds_per_image: float = 0.0  # the batch's forward time / its images (shadow scoring compares this)


@dataclass
class _Item:
    images: list[np.ndarray]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    model: ServableModel | None = None  # the model the images were decoded for; None: whichever serves


@dataclass
class BatcherStats:
    batches: int = 0
    images: int = 0
    requests: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class MicroBatcher:
    """One worker thread, one forward at a time, over whatever model ``get_model`` returns now."""

    def __init__(
        self,
        get_model: Callable[[], ServableModel | None],
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int = 4096,
        log: Callable[[PendingPredictions], object] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.get_model = get_model
        self.log = log
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_queue)
        self._arriving = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stats = BatcherStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=timeout)
        self._thread = None

    # -- request side --

    def arriving(self) -> None:
        """A request started reading its body: worth waiting for (call ``arrived`` after ``submit``)."""
        with self._lock:
            self._arriving += 1

    def arrived(self) -> None:
        with self._lock:
            self._arriving -= 1

    def submit(self, images: list[np.ndarray], model: ServableModel | None = None) -> asyncio.Future:
        """Queue one request's images; await the returned future for its ``BatchResult``.

        ``model``: the model the images were decoded for (its channels); it answers them even if
        another version was swapped in meanwhile.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self._queue.put_nowait(_Item(images, future, loop, model))
        except queue.Full:
            raise Overloaded("the server is overloaded (batch queue full); retry shortly") from None
        return future

    async def predict(self, images: list[np.ndarray]) -> BatchResult:
        return await self.submit(images)

    # -- worker side --

    def _run(self) -> None:
        carry: _Item | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            batch, carry, stop = self._collect(first)
            self._forward(batch)
            if stop:
                return

    def _collect(self, first: _Item) -> tuple[list[_Item], _Item | None, bool]:
        """Fill a batch from the queue; returns (batch, item for the next batch, stop requested)."""
        batch = [first]
        size = len(first.images)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                with self._lock:
                    waiting_is_useful = self._arriving > 0
                if remaining <= 0 or not waiting_is_useful:
                    break
                try:
                    item = self._queue.get(timeout=min(remaining, _POLL))
                except queue.Empty:
                    continue
            if item is None:
                return batch, None, True
            if size + len(item.images) > self.max_batch:
                return batch, item, False
            batch.append(item)
            size += len(item.images)
        return batch, None, False

    def _forward(self, batch: list[_Item]) -> None:
        current = self.get_model()  # read once: the batch is answered by one version, bar requests decoded earlier
        groups: dict[int, tuple[ServableModel | None, list[_Item]]] = {}
        for item in batch:
            model = item.model or current
            groups.setdefault(id(model), (model, []))[1].append(item)
        for model, items in groups.values():
            if model is None:
                self._fail(items, NoModelLoaded("no model version is loaded yet; see GET /ready"))
            else:
                self._answer(model, items)

    def _answer(self, model: ServableModel, batch: list[_Item]) -> None:
        """One forward of ``batch`` through ``model``; every request gets its share, or the error."""
        images = [image for item in batch for image in item.images]
        started = time.perf_counter()
        try:
            predictions = model.predict(images)
        except Exception as error:  # noqa: BLE001 - answered as a 500 to each request of the batch
            log.exception("forward pass failed for a batch of %d images", len(images))
            self.stats.failed_batches += 1
            self._fail(batch, error)
            return
        per_image = (time.perf_counter() - started) / len(images)
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.images += len(images)
        self.stats.largest_batch = max(self.stats.largest_batch, len(images))
        ids = [str(uuid.uuid4()) for _ in images]
        self._log_batch(model, ids, images, predictions)
        start = 0
        for item in batch:
            end = start + len(item.images)
            result = BatchResult(model, predictions.probabilities[start:end], ids[start:end], per_image)
            _deliver(item, result, None)
            start = end

    def _log_batch(
        self, model: ServableModel, ids: list[str], images: list[np.ndarray], predictions: Predictions
    ) -> None:
        """Hand the batch to the prediction log; a failure there is logged and never costs an answer."""
        if self.log is None:
            return
        try:
            self.log(
                PendingPredictions(
                    ids=ids,
                    created_at=datetime.now(UTC),
                    model_name=model.name,
                    model_version=str(model.version),
                    classes=list(model.classes),
                    reduction=model.reduction,
                    images=images,
                    probabilities=predictions.probabilities,
                    embeddings=predictions.embeddings,  # source: "rest", PendingPredictions' default
                )
            )
        except Exception:  # noqa: BLE001 - the answers go out whatever happens to the log
            log.exception("could not hand %d predictions to the prediction log", len(ids))

    @staticmethod
    def _fail(batch: list[_Item], error: BaseException) -> None:
        for item in batch:
            _deliver(item, None, error)


def _deliver(item: _Item, result: BatchResult | None, error: BaseException | None) -> None:
    with suppress(RuntimeError):  # the event loop is already closed (server shutting down)
        item.loop.call_soon_threadsafe(_resolve, item.future, result, error)


def _resolve(future: asyncio.Future, result: BatchResult | None, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
