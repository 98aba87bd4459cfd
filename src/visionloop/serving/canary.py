"""The server's side of a canary: a share of /predict requests answered by the challenger, and what it counted.

``visionloop promote --canary PERCENT`` (``promotion.canary``) writes a ``CanaryState`` to the registry;
``CanaryRouter`` follows it like the champion alias (polled every ``serving.poll_seconds``, one registry call)
and, for each request, picks the arm that answers it:

* **Which requests.** A request carrying a client key (header ``X-Client-Key`` or query ``client_key``) is
  drawn by a hash of the key and the canary (``CanaryState.key``): the same client gets the same arm on every
  request and from every worker of ``serve --workers N``. Without a key the draw is random per request.
* **Which model.** The canary arm is the server's challenger (``serving.challenger``: loaded, warmed up and
  checked like a champion) — only while its loaded version is the canary's version and it reads images like
  the champion (same channels). Until then, and as soon as the canary ends or the alias moves, every request
  goes to the champion: starting, finishing or rolling back a canary never refuses a request.
* **Nothing fails because of the canary.** A challenger forward that raises is answered again by the
  champion (the failure is counted, the client gets a normal answer).

The answer's ``model_version`` says which version answered, and the prediction log stores the rows with
that version (``serving.batcher``), which is what the canary's watch compares. What the log cannot hold —
requests, failures and answer time per arm — each serving process counts and publishes as a small JSON file
under ``<state dir>/canary/<canary key>/`` (written whole, on each poll and at shutdown);
``canary_counters`` sums the files of every process that served the canary.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request

from visionloop.config import Settings
from visionloop.contracts import ArmCounters, CanaryCounters, CanaryState
from visionloop.models.registry import canary_state
from visionloop.serving.batcher import BatchResult, NoModelLoaded
from visionloop.serving.sources import ModelSource, RegistryModelSource

if TYPE_CHECKING:
    from visionloop.models.bundle import ServableModel
    from visionloop.serving.challenger import Challenger

log = logging.getLogger(__name__)

CHAMPION_ARM, CANARY_ARM = "champion", "canary"
CLIENT_KEY_HEADER, CLIENT_KEY_QUERY = "x-client-key", "client_key"


def client_key(request: Request) -> str | None:
    """The caller's sticky key, when it sent one (header first, then the query string)."""
    return request.headers.get(CLIENT_KEY_HEADER) or request.query_params.get(CLIENT_KEY_QUERY) or None


def in_canary(state: CanaryState, key: str | None) -> bool:
    """Whether a request goes to the canary: a stable draw per client key and canary, else a random one."""
    if key is None:
        return random.random() < state.share
    digest = hashlib.blake2b(f"{state.key}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < state.share


def counters_dir(state_dir: Path, state: CanaryState) -> Path:
    """Where serving processes publish what they counted for one canary."""
    return state_dir / "canary" / state.key


def canary_counters(state_dir: Path, state: CanaryState) -> CanaryCounters:
    """Requests, failures and answer time per arm, summed over every process that served this canary."""
    total = {CHAMPION_ARM: ArmCounters(), CANARY_ARM: ArmCounters()}
    for path in sorted(counters_dir(state_dir, state).glob("*.json")):
        try:
            published = json.loads(path.read_text())
        except (OSError, ValueError):  # replaced between the listing and the read
            continue
        for arm, values in published.items():
            total[arm].add(ArmCounters(**values))
    return total


@dataclass
class Route:
    """The arm chosen for one request: the model it was submitted to, and when (for the answer time)."""

    model: ServableModel
    arm: str
    started: float


class CanaryRouter:
    """Follows the registry's canary and routes requests (``choose``, ``settle``); counts per arm."""

    def __init__(self, settings: Settings | None, challenger: Challenger, *, poll_seconds: float) -> None:
        self.settings = settings  # None: the champion does not come from the registry (no canary to follow)
        self.challenger = challenger
        self.poll_seconds = poll_seconds
        self.state: CanaryState | None = None
        self.counters: CanaryCounters = {}
        self.last_error: str | None = None
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def choose(self, champion: ServableModel, key: str | None) -> Route:
        """The model that answers this request: the canary's when it is live and the draw says so."""
        state, model = self.state, self.challenger.current()
        live = (
            state is not None
            and model is not None
            and str(model.version) == state.version
            and model.channels == champion.channels
        )
        if live and in_canary(state, key):
            return Route(model, CANARY_ARM, time.perf_counter())
        return Route(champion, CHAMPION_ARM, time.perf_counter())

    async def settle(
        self, route: Route, future: asyncio.Future, resubmit: Callable[[ServableModel], asyncio.Future],
        champion: ServableModel,
    ) -> BatchResult:
        """Await the chosen arm's answer; a canary forward that fails is answered by ``champion`` instead."""
        failed = False
        try:
            result = await future
        except NoModelLoaded:
            raise
        except Exception as error:  # noqa: BLE001 - the canary's failure is counted, never the client's
            if route.arm != CANARY_ARM:
                raise
            log.warning("canary v%s failed a forward (%s); answered by the champion", route.model.version, error)
            failed = True
            result = await resubmit(champion)
        self._count(route.arm, time.perf_counter() - route.started, failed)
        return result

    def _count(self, arm: str, seconds: float, failed: bool) -> None:
        if self.state is None:
            return
        counters = self.counters.setdefault(arm, ArmCounters())
        counters.requests += 1
        counters.failed += int(failed)
        counters.latency_s += seconds

    async def run(self) -> None:
        """Follow the registry's canary until cancelled (returns at once without a registry to follow)."""
        if self.settings is None:
            return
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_seconds)

    async def poll_once(self) -> None:
        """Read the canary state once and publish this process's counters; a registry error keeps the last state."""
        if self.settings is None:
            return
        try:
            state = await asyncio.to_thread(canary_state, self.settings)
        except Exception as error:  # noqa: BLE001 - the registry being down must not stop serving
            if self.last_error is None:
                log.warning("cannot read the canary state: %s", error)
            self.last_error = f"{type(error).__name__}: {error}"
            return
        self.last_error = None
        self.publish()
        if state != self.state:
            if state is not None:
                log.info("canary: v%s answers %.1f %% of requests", state.version, 100 * state.share)
            elif self.state is not None:
                log.info("canary of v%s ended: the champion answers every request", self.state.version)
            self.state, self.counters = state, {}

    def publish(self) -> None:
        """Write what this process counted for the current canary (whole file: a reader never sees half)."""
        state, counters = self.state, self.counters
        if self.settings is None or state is None or not counters:
            return
        folder = counters_dir(self.settings.state_dir, state)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{self.name}.json.part"
        partial.write_text(json.dumps({arm: asdict(values) for arm, values in counters.items()}))
        os.replace(partial, folder / f"{self.name}.json")


def canary_router(model_source: ModelSource, challenger: Challenger, poll_seconds: float) -> CanaryRouter:
    """The router beside ``model_source``: it follows the registry's canary only when the champion comes from
    the registry (a bundle folder or a pinned version has no canary)."""
    settings = model_source.settings if isinstance(model_source, RegistryModelSource) else None
    return CanaryRouter(settings, challenger, poll_seconds=poll_seconds)
