"""The one place where the command line reaches the Prefect flows and tasks.

The library under ``src/visionloop`` never imports Prefect: a step is a plain function, and the
flows in ``flows/`` wrap those functions in tasks. A few commands, though, exist to run a flow in
this process (``demo``, ``retrain``, ``alert``, ``monitor --alert``); they call it through here, so
the dependency from the command line onto ``flows``/``tasks`` is written once and can be checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from visionloop.config import Settings
from visionloop.healing.alerts import AlertDecision


def run_demo(settings: Settings, *, keep: bool, echo: Callable[[str], Any]) -> None:
    """The whole lifecycle on the embedded digits (the ``demo`` flow), on the stack of ``stack.profile``."""
    from flows.demo import run_demo as demo

    demo(settings, keep=keep, echo=echo)


def run_retrain(trigger: str) -> Any:
    """The ``retrain`` flow, run in this process."""
    from flows.retrain import retrain

    return retrain(trigger=trigger)


def run_monitor_flow(settings: Settings, window: int | None, stream_id: str | None = None) -> dict[str, Any]:
    """The ``monitor`` flow on the champion (one video stream's frames, with ``stream_id``), emitting the drift
    alert when it finds one."""
    from flows.monitor import monitor

    return monitor(project_dir=str(settings.root), window=window, stream_id=stream_id)


def raise_alert(settings: Settings, payload: dict[str, Any]) -> AlertDecision:
    """Record a drift alert and emit its Prefect event (unless suppressed), then flush the event."""
    from prefect.events.worker import EventsWorker

    from tasks.alerts import raise_drift_alert

    decision = raise_drift_alert.fn(settings, payload)
    EventsWorker.drain_all()
    return decision
