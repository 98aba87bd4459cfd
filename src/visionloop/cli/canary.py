"""What ``visionloop promote --canary PERCENT`` and ``visionloop registry canary`` do (commands in ``cli.registry``).

The work is ``visionloop.promotion.canary``'s; this module prints it: the start (or the gate's refusal), a
progress line per check while watching, and the record that ended the canary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.contracts import CanaryState, PromotionRecord
    from visionloop.promotion.canary_window import CanaryVerdict

Show = Callable[["PromotionRecord"], None]  # how the calling command prints a record (``cli.registry``)


@dataclass(frozen=True)
class CanaryOptions:
    gate: bool  # run the offline gate first
    watch: bool  # stay and watch it to the end
    as_json: bool  # print records as JSON


def run_canary(share: float, version: str | None, trigger: str, options: CanaryOptions, show: Show) -> None:
    """Start a canary of the challenger at ``share`` (0–1] and, with ``options.watch``, see it through."""
    from visionloop.config import Settings
    from visionloop.models.registry import RegistryError
    from visionloop.promotion.canary import start_canary

    settings = Settings.load()
    try:
        started = start_canary(settings, share, trigger, version, gate=options.gate)
    except RegistryError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    if started.state is None or not options.watch:  # the gate's decision (no canary), or a canary left running
        _echo_record(started.record, options.as_json, show)
        if started.state is not None and not options.as_json:
            typer.echo("watch it with `visionloop registry canary --watch` (or the canary flow)")
        return
    if not options.as_json:
        show(started.record)
    _watch(settings, started.state, trigger, options.as_json, show)


def show_canary(watch: bool, trigger: str, as_json: bool, show: Show) -> None:
    """The canary in progress and its window now; with ``watch``, judge it until it ends."""
    from visionloop.config import Settings
    from visionloop.models.registry import canary_state
    from visionloop.promotion.canary import check_canary

    settings = Settings.load()
    state = canary_state(settings)
    if state is None:
        typer.echo(f"{settings.model_name} has no canary running")
        return
    if watch:
        _watch(settings, state, trigger, as_json, show)
        return
    verdict = check_canary(settings, state)
    if as_json:
        typer.echo(json.dumps({"canary": state.to_dict(), "verdict": verdict.action, "reason": verdict.reason,
                               "figures": verdict.figures}, indent=2))
        return
    typer.echo(f"canary v{state.version}: {100 * state.share:g} % of requests beside v{state.champion} since "
               f"{state.started_at} ({state.trigger})")
    typer.echo(verdict.progress())


def _watch(settings: Settings, state: CanaryState, trigger: str, as_json: bool, show: Show) -> None:
    from visionloop.promotion.canary import watch_canary

    def progress(verdict: CanaryVerdict) -> None:
        if not as_json:
            typer.echo(verdict.progress(), err=True)

    record = watch_canary(settings, state, trigger, progress)
    if record is None:
        typer.echo("the canary was ended elsewhere: see `visionloop registry history`")
        return
    _echo_record(record, as_json, show)


def _echo_record(record: PromotionRecord, as_json: bool, show: Show) -> None:
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2))
    else:
        show(record)
