"""Tasks of the canary flow: start it (after the offline gate), then watch it to its end (``promotion.canary``)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retry import retry_unless
from visionloop.config import Settings
from visionloop.contracts import CanaryState, PromotionRecord
from visionloop.models.registry import RegistryError
from visionloop.promotion import canary
from visionloop.promotion.canary_window import CanaryVerdict


# Retry MLflow hiccups, not the registry's refusals (a canary already running, nothing to gate...).
@task(name="start canary", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless(RegistryError),
      cache_policy=NO_CACHE)
def start(settings: Settings, share: float, trigger: str, gate: bool) -> canary.CanaryStart:
    """The offline gate (with ``gate``); on a pass the challenger answers ``share`` of /predict (recorded)."""
    return canary.start_canary(settings, share, trigger, gate=gate)


@task(name="watch canary", cache_policy=NO_CACHE)
def watch(settings: Settings, state: CanaryState, trigger: str) -> PromotionRecord | None:
    """Judge the window every check_seconds; finish the promotion or roll back (recorded), a log line per check."""

    def progress(verdict: CanaryVerdict) -> None:
        print(f"canary v{state.version}: {verdict.progress()}")

    return canary.watch_canary(settings, state, trigger, progress)
