"""Hot swap for a stream: a ``serving.reload.ModelManager`` polled in a background thread, as the server does.

The server polls from its event loop; a stream's loop is plain threads, so the manager gets an event loop
of its own in a daemon thread. The stream reads ``manager.current()`` once per batch, so a new champion
answers from the next batch on while the decoding never waits for a load.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from visionloop.serving.reload import ModelManager


@contextlib.contextmanager
def following(manager: ModelManager, first_load_timeout: float) -> Iterator[ModelManager]:
    """Load the current version now (raise ``RuntimeError`` if none loads), then follow it until the block ends."""
    asyncio.run(manager.poll_once())
    if not manager.ready:
        problem = manager.last_reload_error or manager.last_poll_error or "the model source names no version"
        raise RuntimeError(f"no model to classify with: {problem}")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(_poll_after_first(manager)))
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])
        loop.close()

    thread = threading.Thread(target=run, name="model-follower", daemon=True)
    thread.start()
    started.wait(first_load_timeout)
    try:
        yield manager
    finally:
        if task:
            loop.call_soon_threadsafe(task[0].cancel)
        thread.join(timeout=first_load_timeout)


async def _poll_after_first(manager: ModelManager) -> None:
    await asyncio.sleep(manager.poll_seconds)  # the first version was loaded by ``following``
    await manager.run()
