"""A hot swap to a model with another channel count while requests are in flight (issue 13)."""

from __future__ import annotations

import asyncio

import numpy as np
from helpers.models import tiny_model

from visionloop.serving.batcher import MicroBatcher

CLASSES = [str(d) for d in range(10)]


def test_requests_decoded_for_the_old_model_are_answered_by_it_after_a_swap_to_other_channels() -> None:
    gray, rgb = tiny_model(CLASSES, "1", channels=1), tiny_model(CLASSES, "2", channels=3)
    serving = {"model": gray}
    gray_images = [np.full((16, 16), 90, np.uint8), np.zeros((16, 16), np.uint8)]
    rgb_images = [np.full((16, 16, 3), 90, np.uint8)]

    async def main() -> tuple:
        batcher = MicroBatcher(lambda: serving["model"], max_batch=8, max_wait_ms=200)
        batcher.start()
        try:
            decoded_for = serving["model"]  # the route decoded with gray's channels...
            serving["model"] = rgb  # ...then the swap happened before the batch ran
            batcher.arriving()  # both requests in flight together: one collected batch, two models
            old = batcher.submit(gray_images, decoded_for)
            new = batcher.submit(rgb_images, serving["model"])
            batcher.arrived()
            return await asyncio.wait_for(asyncio.gather(old, new), 30)
        finally:
            batcher.stop()

    old, new = asyncio.run(main())
    assert old.model is gray and old.probabilities.shape == (2, 10)
    np.testing.assert_allclose(old.probabilities, gray.predict(gray_images).probabilities, rtol=1e-5, atol=1e-6)
    assert new.model is rgb and new.probabilities.shape == (1, 10)
    assert np.isfinite(old.probabilities).all() and np.isfinite(new.probabilities).all()
