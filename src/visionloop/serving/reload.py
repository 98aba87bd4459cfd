"""Which model serves, and hot reload when the registry's alias moves.

The server does not know about MLflow: it is given a ``ModelSource`` (the registry-backed one follows
the ``champion`` alias). ``ModelManager`` polls ``current_version()``; when it changes, the new
version is loaded, warmed up and checked to predict on a sample in a worker thread (the event loop
keeps serving), then swapped in with one reference assignment. A version that fails to load or
fails its check never serves: the old one stays and the failure is kept in ``last_reload_error``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from visionloop.monitoring.features import reduce_embeddings

if TYPE_CHECKING:
    from visionloop.models.bundle import ServableModel
    from visionloop.serving.sources import ModelSource

log = logging.getLogger(__name__)


class ModelCheckFailed(RuntimeError):
    """A loaded version did not predict a sample correctly; it will not serve."""


def sample_images(channels: int, size: int = 32, count: int = 3) -> list[np.ndarray]:
    """Deterministic canonical images (black, gradient, noise…) for warm-up and the sanity check."""
    rng = np.random.default_rng(0)
    shape = (size, size) if channels == 1 else (size, size, channels)
    gradient = np.broadcast_to(np.linspace(0, 255, size, dtype=np.float32), (size, size))
    if channels != 1:
        gradient = np.repeat(gradient[:, :, None], channels, axis=2)
    base = [np.zeros(shape, np.uint8), gradient.astype(np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)]
    return [base[i % len(base)] for i in range(count)]


def warm_up_and_check(model: ServableModel, max_batch: int) -> None:
    """Run the model at batch 1..3 and at ``max_batch`` (``serving.max_batch``: the largest batch it will see);
    raise ``ModelCheckFailed`` on a wrong answer.

    Checks: probabilities N×len(classes), finite, rows summing to 1; embeddings finite and reducible
    by the version's drift reduction; the same answer for an image alone and inside a full batch
    (a network left in training mode fails this).
    """
    if not model.classes or len(set(model.classes)) != len(model.classes):
        raise ModelCheckFailed(f"classes must be distinct and non-empty, got {model.classes!r}")
    channels = model.channels
    sample = sample_images(channels)
    try:
        small = model.predict(sample)
        big = model.predict(sample_images(channels, count=max(max_batch, len(sample))))
    except Exception as error:
        raise ModelCheckFailed(f"the model could not predict a sample: {error}") from error
    probabilities = np.asarray(small.probabilities)
    if probabilities.shape != (len(sample), len(model.classes)):
        raise ModelCheckFailed(
            f"probabilities of shape {probabilities.shape} for {len(sample)} images and {len(model.classes)} classes"
        )
    if not np.isfinite(probabilities).all() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        raise ModelCheckFailed("probabilities are not finite or do not sum to 1")
    embeddings = np.asarray(small.embeddings)
    if embeddings.shape[0] != len(sample) or not np.isfinite(embeddings).all():
        raise ModelCheckFailed(f"embeddings of shape {embeddings.shape} are not finite per image")
    if not np.allclose(np.asarray(big.probabilities)[: len(sample)], probabilities, atol=1e-4):
        raise ModelCheckFailed("an image alone and the same image in a batch get different answers")
    if model.reduction is not None:
        try:
            reduce_embeddings(embeddings, model.reduction)
        except Exception as error:
            raise ModelCheckFailed(f"the drift reduction does not fit the embeddings: {error}") from error


class ModelManager:
    """Holds the serving model; ``poll_once``/``run`` follow the source and swap atomically."""

    def __init__(self, source: ModelSource, *, poll_seconds: float, max_batch: int) -> None:
        self.source = source
        self.poll_seconds = poll_seconds
        self.max_batch = max_batch
        self.retry_failed_seconds = max(60.0, 10 * poll_seconds)
        self._model: ServableModel | None = None
        self.loaded_at: str | None = None
        self.reloads = 0  # successful swaps (the first load counts)
        self.reload_failures = 0
        self.last_reload_error: dict[str, Any] | None = None  # cleared by the next successful swap
        self.last_poll_error: str | None = None
        self._failed: dict[str, float] = {}  # version → monotonic time it may be retried
        self._lock = asyncio.Lock()
        self.on_swap: list[Callable[[str], None]] = []  # told each version swapped in (the workers' board)

    def current(self) -> ServableModel | None:
        """The model serving now (the batcher reads it once per batch)."""
        return self._model

    @property
    def ready(self) -> bool:
        return self._model is not None

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - hot reload must outlive any one bad poll
                log.exception("model poll failed")
            await asyncio.sleep(self.poll_seconds)

    async def poll_once(self) -> bool:
        """Check the source once; True when a new version was swapped in."""
        async with self._lock:
            try:
                version = await asyncio.to_thread(self.source.current_version)
            except Exception as error:  # noqa: BLE001 - the registry being down must not stop serving
                if self.last_poll_error is None:
                    log.warning("cannot ask the model source for the current version: %s", error)
                self.last_poll_error = f"{type(error).__name__}: {error}"
                return False
            self.last_poll_error = None
            if version is None or (self._model is not None and str(version) == str(self._model.version)):
                return False
            version = str(version)
            if time.monotonic() < self._failed.get(version, 0.0):
                return False
            try:
                model = await asyncio.to_thread(self._load_checked, version)
            except Exception as error:  # noqa: BLE001 - a bad version must not replace a good one
                self._record_failure(version, error)
                return False
            previous = self._model.version if self._model is not None else None
            self._model = model  # the swap: one reference assignment
            self.loaded_at = datetime.now(UTC).isoformat()
            self.reloads += 1
            self.last_reload_error = None
            self._failed.pop(version, None)
            log.info("now serving %s version %s (was %s)", model.name, model.version, previous)
            for listener in self.on_swap:
                listener(str(model.version))
            return True

    def _load_checked(self, version: str) -> ServableModel:
        started = time.perf_counter()
        model = self.source.load(version)
        if str(model.version) != version:
            raise ModelCheckFailed(f"asked for version {version}, the source loaded version {model.version}")
        warm_up_and_check(model, self.max_batch)
        log.info("loaded and checked version %s in %.2f s", version, time.perf_counter() - started)
        return model

    def _record_failure(self, version: str, error: BaseException) -> None:
        self.reload_failures += 1
        self._failed[version] = time.monotonic() + self.retry_failed_seconds
        serving = self._model.version if self._model is not None else None
        self.last_reload_error = {
            "version": version,
            "error": f"{type(error).__name__}: {error}",
            "at": datetime.now(UTC).isoformat(),
            "still_serving": serving,
        }
        log.error(
            "version %s failed to load or failed its check; still serving %s\n%s",
            version,
            serving,
            "".join(traceback.format_exception(error)).rstrip(),
        )

    def status(self) -> dict[str, Any]:
        model = self._model
        return {
            "model_loaded": model is not None,
            "model_name": model.name if model else None,
            "model_version": str(model.version) if model else None,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "last_reload_error": self.last_reload_error,
            "last_poll_error": self.last_poll_error,
        }
