"""Which decoded frames are classified: sampling at a target rate, and the latency policy of live sources.

``Sampler`` keeps one frame per ``1/fps`` seconds of stream time (every frame when the source is slower).
``FrameBuffer`` sits between the decoding thread and the classifying loop: for a file it blocks the decoder
(nothing is lost, the file waits), for a live source it never blocks — when full the oldest frame is dropped —
and ``take`` drops frames older than ``max_latency`` when their batch is formed, so a slow model costs frames
(counted in ``DropStats``), never a growing delay behind the camera.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Sampler:
    """Keep a frame when its stream time reaches the next slot of a ``fps`` grid (ties within 1 ms kept)."""

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self._next: float | None = None

    def keep(self, timestamp: float) -> bool:
        if self._next is not None and timestamp < self._next - 1e-3:
            return False
        # the next slot follows the grid, or restarts from this frame after a gap longer than one period
        grid = self._next + self.period if self._next is not None else timestamp + self.period
        self._next = grid if grid > timestamp else timestamp + self.period
        return True


@dataclass
class DropStats:
    late: int = 0  # older than max_latency when their batch was formed
    overflow: int = 0  # pushed out of a full buffer by newer frames


@dataclass
class _Waiting(Generic[T]):
    item: T
    arrived: float  # monotonic seconds


class FrameBuffer(Generic[T]):
    """A bounded hand-over from one producer thread to one consumer; ``close`` marks the end."""

    def __init__(self, capacity: int, *, live: bool, max_latency: float, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.live = live
        self.max_latency = max_latency
        self.clock = clock
        self.drops = DropStats()
        self._items: deque[_Waiting[T]] = deque()
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T) -> None:
        """Add a frame: a file's decoder waits for room, a live source's oldest frame makes room."""
        with self._cond:
            while not self.live and len(self._items) >= self.capacity and not self._closed:
                self._cond.wait()
            if self._closed:
                return
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.drops.overflow += 1
            self._items.append(_Waiting(item, self.clock()))
            self._cond.notify_all()

    def close(self) -> None:
        """No more frames (end of the source, or the consumer stopping): wakes both sides."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, count: int) -> list[T] | None:
        """Up to ``count`` frames; None once closed and empty.

        A file waits for a full batch (throughput); a live source takes what has arrived (latency), dropping
        what is already older than ``max_latency``.
        """
        with self._cond:
            while True:
                if self.live:
                    self._drop_late()
                enough = len(self._items) >= (count if not self.live else 1)
                if enough or (self._closed and self._items):
                    batch = [self._items.popleft().item for _ in range(min(count, len(self._items)))]
                    self._cond.notify_all()
                    return batch
                if self._closed:
                    return None
                self._cond.wait(timeout=self.max_latency if self.live else None)

    def _drop_late(self) -> None:
        now = self.clock()
        while self._items and now - self._items[0].arrived > self.max_latency:
            self._items.popleft()
            self.drops.late += 1
