"""Micro-batching and hot reload in isolation, on freshly initialised networks (no server, no training)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import tiny_model

from visionloop.config import Settings
from visionloop.models.bundle import Predictions, ServableModel
from visionloop.serving.batcher import MicroBatcher, NoModelLoaded
from visionloop.serving.reload import ModelCheckFailed, ModelManager, sample_images, warm_up_and_check
from visionloop.serving.sources import LocalBundleSource, PinnedVersionSource, source_from_uri
from visionloop.store.records import PendingPredictions

CLASSES = [str(d) for d in range(10)]


class CountingModel:
    """A real model that records the size of every forward pass."""

    def __init__(self, model: ServableModel) -> None:
        self.model = model
        self.calls: list[int] = []

    def predict(self, images: list[np.ndarray]) -> Predictions:
        self.calls.append(len(images))
        return self.model.predict(images)

    def __getattr__(self, name: str) -> object:  # name, version, classes, reduction
        return getattr(self.model, name)


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(n)]


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers() -> None:
    model = tiny_model(CLASSES, "1")
    counting = CountingModel(model)
    inputs = images(16)
    logged: list[PendingPredictions] = []
    answered: list[str] = []

    def log(pending: PendingPredictions) -> None:
        assert not set(pending.ids) & set(answered)  # logged before any of its answers goes out
        logged.append(pending)

    async def main() -> list:
        batcher = MicroBatcher(lambda: counting, max_batch=8, max_wait_ms=200, log=log)
        batcher.start()
        try:
            for _ in inputs:
                batcher.arriving()  # sixteen requests are being read
            futures = []
            for image in inputs:
                futures.append(batcher.submit([image]))
                batcher.arrived()
            results = []
            for future in futures:
                results.append(await future)
                answered.extend(results[-1].prediction_ids)
            return results
        finally:
            batcher.stop()

    results = asyncio.run(main())
    assert sum(counting.calls) == 16
    assert len(counting.calls) < 16  # batched
    assert max(counting.calls) <= 8
    alone = model.predict(inputs)
    for i, result in enumerate(results):
        assert result.model is counting
        assert result.probabilities.shape == (1, 10)
        np.testing.assert_allclose(result.probabilities[0], alone.probabilities[i], atol=1e-5)
    # one log entry per forward pass, carrying exactly the ids the requests were answered with
    assert [len(p.ids) for p in logged] == counting.calls
    assert [i for p in logged for i in p.ids] == answered and len(set(answered)) == 16
    logged_probabilities = np.concatenate([p.probabilities for p in logged])
    np.testing.assert_allclose(logged_probabilities, np.concatenate([r.probabilities for r in results]))
    assert all(p.model_version == "1" and p.source == "rest" and len(p.images) == len(p.ids) for p in logged)


def test_a_failing_prediction_log_costs_no_answer() -> None:
    def broken_log(_pending: PendingPredictions) -> None:
        raise ValueError("queue closed")

    async def main() -> list:
        batcher = MicroBatcher(lambda: tiny_model(CLASSES, "1"), max_batch=4, max_wait_ms=4, log=broken_log)
        batcher.start()
        try:
            # the worker thread survives each failure (a dead one would leave the request waiting forever)
            return [await asyncio.wait_for(batcher.predict(images(2)), 30) for _ in range(3)]
        finally:
            batcher.stop()

    results = asyncio.run(main())
    assert [r.probabilities.shape for r in results] == [(2, 10)] * 3
    assert all(len(r.prediction_ids) == 2 for r in results)


def test_a_lone_request_does_not_wait_and_batches_never_exceed_max_batch() -> None:
    counting = CountingModel(tiny_model(CLASSES, "1"))

    async def main() -> tuple[float, list]:
        batcher = MicroBatcher(lambda: counting, max_batch=4, max_wait_ms=2000)
        batcher.start()
        try:
            started = time.perf_counter()
            await batcher.predict(images(1))  # nobody else arriving: no reason to wait
            lone = time.perf_counter() - started
            results = await asyncio.gather(*(batcher.predict(images(3)) for _ in range(3)))
            return lone, results
        finally:
            batcher.stop()

    lone, results = asyncio.run(main())
    assert lone < 1.0
    assert all(r.probabilities.shape == (3, 10) for r in results)
    assert max(counting.calls) <= 4  # 3 + 3 > 4: the second request waits for the next batch


def test_no_model_loaded_is_an_error_for_the_request() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda: None, max_batch=4, max_wait_ms=4)
        batcher.start()
        try:
            await batcher.predict(images(1))
        finally:
            batcher.stop()

    with pytest.raises(NoModelLoaded):
        asyncio.run(main())


class FakeSource:
    """In-memory versions: the seam the registry-backed source plugs into."""

    def __init__(self, versions: dict, current: str | None) -> None:
        self.versions = versions
        self.current = current
        self.loads: list[str] = []
        self.poll_error: Exception | None = None

    def current_version(self) -> str | None:
        if self.poll_error is not None:
            raise self.poll_error
        return self.current

    def load(self, version: str) -> ServableModel:
        self.loads.append(version)
        return self.versions[version]()


def test_manager_swaps_good_versions_and_keeps_serving_through_bad_ones() -> None:
    def raises() -> ServableModel:
        raise OSError("artifact download failed")

    source = FakeSource(
        {
            "1": lambda: tiny_model(CLASSES, "1"),
            "2": lambda: tiny_model(["a", "b", "c"], "2", outputs=10),  # 10 outputs for 3 classes
            "3": raises,
            "4": lambda: tiny_model(CLASSES, "4", seed=1),
        },
        current=None,
    )
    manager = ModelManager(source, poll_seconds=0.01, max_batch=4)

    async def main() -> None:
        assert await manager.poll_once() is False and manager.current() is None  # nothing to serve yet
        source.current = "1"
        assert await manager.poll_once() is True
        assert manager.current().version == "1" and manager.ready

        source.current = "2"
        assert await manager.poll_once() is False
        assert manager.current().version == "1"
        error = manager.last_reload_error
        assert error["version"] == "2" and "ModelCheckFailed" in error["error"] and error["still_serving"] == "1"
        await manager.poll_once()  # a failed version is not reloaded at every poll
        assert source.loads.count("2") == 1

        source.current = "3"
        assert await manager.poll_once() is False
        assert "artifact download failed" in manager.last_reload_error["error"]
        assert manager.current().version == "1"

        source.poll_error = ConnectionError("registry down")
        assert await manager.poll_once() is False
        assert "registry down" in manager.status()["last_poll_error"]
        source.poll_error = None

        source.current = "4"
        assert await manager.poll_once() is True
        assert manager.current().version == "4"
        assert manager.last_reload_error is None and manager.reload_failures == 2 and manager.reloads == 2

    asyncio.run(main())


class BatchCentering(torch.nn.Module):
    """Normalises by the batch's own statistics, as BatchNorm left in training mode would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / (x.std() + 1e-3) * 10


def test_check_refuses_a_network_whose_answer_depends_on_the_batch() -> None:
    model = tiny_model(CLASSES, "1")
    warm_up_and_check(model, max_batch=8)
    model.network.blocks[0].insert(0, BatchCentering())
    with pytest.raises(ModelCheckFailed, match="alone and the same image in a batch"):
        warm_up_and_check(dataclasses.replace(model), max_batch=8)  # replace() rebuilds the inference copy


def test_check_refuses_a_reduction_that_does_not_fit() -> None:
    model = tiny_model(CLASSES, "1")
    model.reduction = {"n_components": 1, "mean": [0.0] * 5, "components": [[1.0] * 5]}  # embeddings are 16-d
    with pytest.raises(ModelCheckFailed, match="reduction"):
        warm_up_and_check(model, max_batch=8)


def test_sample_images_are_canonical() -> None:
    gray, rgb = sample_images(1), sample_images(3)
    assert all(i.dtype == np.uint8 and i.shape == (32, 32) for i in gray)
    assert all(i.shape == (32, 32, 3) for i in rgb)


def test_model_uri_forms(tmp_path: Path) -> None:
    settings = Settings.load()
    local = source_from_uri(settings, str(tmp_path))
    assert isinstance(local, LocalBundleSource) and local.current_version() == "local"
    pinned = PinnedVersionSource(FakeSource({"7": lambda: tiny_model(CLASSES, "7")}, current="9"), "7")
    assert pinned.current_version() == "7" and pinned.load("7").version == "7"
    with pytest.raises(ValueError, match="--model-uri"):
        source_from_uri(settings, "s3://bucket/nowhere")
