"""Registry commands: ``promote`` (``--canary``: ``cli.canary``), ``rollback``, ``registry list``, ``history``,
``register``, ``set-champion``, ``canary``.

Heavy imports (MLflow, torch) happen inside the commands so ``visionloop --help`` stays fast.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from visionloop.contracts import PromotionRecord

DECISION_STYLE = {"promoted": "green", "initial": "green", "rollback": "yellow", "assigned": "yellow", "refused": "red",
                 "deferred": "yellow", "canary": "cyan", "canary_rollback": "yellow"}


def _console() -> Console:
    from rich.console import Console

    return Console()


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _version(value: str | None) -> str:
    return f"v{value}" if value is not None else "-"


def _show_record(console: Console, record: PromotionRecord) -> None:
    style = DECISION_STYLE.get(record.decision, "white")
    console.print(
        f"[bold {style}]{record.decision}[/]: champion {_version(record.from_version)} → "
        f"{_version(record.to_version)} (candidate {_version(record.candidate_version)}, trigger {record.trigger})"
    )
    console.print(record.reason, highlight=False)
    if record.flips:
        from visionloop.promotion.diff import describe_flips

        console.print(f"{describe_flips(record.flips)}; gallery: the run's diff/ in MLflow, /label/review when serving",
                      highlight=False)


def _number(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4f}" if number == number else "-"


def _comparison_table(comparison: pd.DataFrame, title: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in ("metric", "champion", "challenger", "delta", "requirement", "ok"):
        table.add_column(column, justify="left" if column in ("metric", "requirement") else "right")
    for row in comparison.itertuples():
        ok = {True: "[green]yes[/]", False: "[red]no[/]"}.get(row.ok, "")
        table.add_row(
            row.metric, _number(row.champion), _number(row.challenger), _number(row.delta), row.requirement, ok
        )
    return table


def register(app: typer.Typer) -> None:
    registry_app = typer.Typer(help="The model registry: versions, aliases and the promotion history.")
    app.add_typer(registry_app, name="registry")

    @app.command("promote")
    def promote_command(
        version: str = typer.Option(
            None, "--version", help="Gate this version instead of the one holding the challenger alias."
        ),
        trigger: str = typer.Option("cli", help="Who asked (recorded in the history)."),
        as_json: bool = typer.Option(False, "--json", help="Print the promotion record as JSON."),
        canary: float = typer.Option(
            None, "--canary", metavar="PERCENT", min=0.01, max=100,
            help="After the gate passes, the challenger first answers this share of /predict (servers follow it); "
                 "watched with promotion.canary's thresholds, then promoted or rolled back by itself.",
        ),
        watch: bool = typer.Option(
            True, "--watch/--no-watch", help="With --canary: stay and watch it to the end (a progress line per check)."
        ),
        gate: bool = typer.Option(
            True, "--gate/--no-gate", help="With --canary: gate offline first (a refusal starts no canary); "
                                           "--no-gate leaves the decision to the canary alone.",
        ),
    ) -> None:
        """Gate the challenger against the champion on the frozen gate set; promote only a clear, safe win.

        Needs a win on the primary metric by the margin; no class or slice may drop beyond its tolerance.
        With --canary, a pass starts a canary instead of promoting at once (README: Canary).

        Every decision is recorded (`visionloop registry history`). Exit code 0 either way; 1: nothing to gate.
        """
        if canary is not None:
            from visionloop.cli.canary import CanaryOptions, run_canary

            run_canary(canary / 100, version, trigger, CanaryOptions(gate, watch, as_json),
                       lambda record: _show_record(_console(), record))
            return
        from visionloop.config import Settings
        from visionloop.models.registry import RegistryError
        from visionloop.promotion.promote import apply_gate, evaluate_gate

        settings = Settings.load()
        try:
            gate = evaluate_gate(settings, version)
        except RegistryError as error:
            _fail(str(error))
        record = apply_gate(settings, gate, trigger)
        if as_json:
            typer.echo(json.dumps(record.to_dict(), indent=2))
            return
        console = _console()
        if gate.comparison is not None:
            console.print(
                _comparison_table(
                    gate.comparison,
                    f"{settings.model_name}: champion {_version(gate.champion_version)} vs "
                    f"challenger v{gate.candidate_version}",
                )
            )
        if gate.slices is not None and gate.slices["regressed"].any():
            regressed = gate.slices[gate.slices["regressed"]]
            console.print(regressed.to_string(index=False), highlight=False)
        _show_record(console, record)

    @app.command("rollback")
    def rollback_command(
        trigger: str = typer.Option("cli", help="Who asked (recorded in the history)."),
        as_json: bool = typer.Option(False, "--json", help="Print the rollback record as JSON."),
    ) -> None:
        """Move the champion alias back to the previous champion (from the promotion history); record it.

        Serving follows the alias and hot-reloads. Repeated rollbacks walk further back.
        """
        from visionloop.config import Settings
        from visionloop.models.registry import RegistryError
        from visionloop.promotion.rollback import rollback

        try:
            record = rollback(Settings.load(), trigger=trigger)
        except RegistryError as error:
            _fail(str(error))
        if as_json:
            typer.echo(json.dumps(record.to_dict(), indent=2))
        else:
            _show_record(_console(), record)

    @registry_app.command("canary")
    def canary_command(
        watch: bool = typer.Option(False, "--watch", help="Judge it every check_seconds until it ends."),
        trigger: str = typer.Option("cli", help="Who asked (recorded when the watch ends it)."),
        as_json: bool = typer.Option(False, "--json", help="Print the state and verdict (or final record) as JSON."),
    ) -> None:
        """The canary in progress (`promote --canary`): its share, its window's figures and verdict now."""
        from visionloop.cli.canary import show_canary

        show_canary(watch, trigger, as_json, lambda record: _show_record(_console(), record))

    @registry_app.command("set-champion")
    def set_champion_command(
        version: str = typer.Argument(..., help="The registered version to serve."),
        reason: str = typer.Option(..., "--reason", help="Why, in words (recorded in the history)."),
        trigger: str = typer.Option("cli", help="Who asked (recorded in the history)."),
        as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    ) -> None:
        """Make VERSION the champion without the gate: a person's override, recorded with the reason.

        Serving follows the alias and hot-reloads; `visionloop rollback` undoes it.
        """
        from visionloop.config import Settings
        from visionloop.promotion.rollback import assign_champion

        try:
            record = assign_champion(Settings.load(), version, reason, trigger=trigger)
        except Exception as error:  # noqa: BLE001 - e.g. no such version: say so, no traceback
            _fail(str(error).splitlines()[0])
        if as_json:
            typer.echo(json.dumps(record.to_dict(), indent=2))
        else:
            _show_record(_console(), record)

    @registry_app.command("list")
    def list_command(as_json: bool = typer.Option(False, "--json", help="Print the versions as JSON.")) -> None:
        """Versions of the registered model, newest first, with aliases, test metrics and lineage."""
        from rich import box
        from rich.table import Table

        from visionloop.config import Settings
        from visionloop.models.registry import list_versions

        settings = Settings.load()
        versions = list_versions(settings)
        if as_json:
            typer.echo(json.dumps(versions, indent=2))
            return
        table = Table(title=f"{settings.model_name} ({len(versions)} versions)", box=box.SIMPLE_HEAD)
        for column in ("version", "aliases", "accuracy", "macro F1", "commit", "data", "strategy", "created"):
            table.add_column(column, no_wrap=True)
        for row in versions:
            metrics, lineage = row["metrics"], row["lineage"]
            table.add_row(
                row["version"],
                "\n".join(row["aliases"]) or "-",
                _number(metrics.get("accuracy", "-")),
                _number(metrics.get("macro_f1", "-")),
                lineage.get("git_commit", "-")[:8],
                lineage.get("data_version", "-")[:8],
                lineage.get("strategy", "-"),
                row["created"][:10],
            )
        _console().print(table)

    @registry_app.command("history")
    def history_command(
        limit: int = typer.Option(20, help="Show at most this many decisions (newest first); 0 for all."),
        as_json: bool = typer.Option(False, "--json", help="Print the records as JSON."),
    ) -> None:
        """Every champion decision — promoted, refused, first champion, rollback — newest first.

        Read from the promotion experiment in MLflow: it survives restarts and works with a remote server.
        """
        from rich.table import Table

        from visionloop.config import Settings
        from visionloop.promotion.audit import history
        from visionloop.promotion.diff import describe_flips

        settings = Settings.load()
        records = history(settings)
        records = records[:limit] if limit > 0 else records
        if as_json:
            typer.echo(json.dumps([r.to_dict() for r in records], indent=2))
            return
        table = Table(title=f"{settings.model_name}: promotion history", show_lines=True)
        table.add_column("when (UTC)", no_wrap=True)
        table.add_column("decision", no_wrap=True)
        table.add_column("champion", no_wrap=True)
        table.add_column("trigger", overflow="fold", max_width=16)
        table.add_column("reason", overflow="fold", ratio=1, min_width=30)
        for record in records:
            style = DECISION_STYLE.get(record.decision, "white")
            change = f"{_version(record.from_version)} → {_version(record.to_version)}"
            if record.decision == "refused":
                change += f"\n(not {_version(record.candidate_version)})"
            elif record.decision in ("canary", "canary_rollback"):
                change += f"\n(canary {_version(record.candidate_version)})"
            table.add_row(
                record.created_at[:19].replace("T", "\n"),
                f"[{style}]{record.decision}[/]",
                change,
                record.trigger,
                "\n".join(part for part in (record.reason, describe_flips(record.flips)) if part),
            )
        _console().print(table)

    @registry_app.command("register")
    def register_command(
        run_id: str = typer.Argument(..., help="MLflow run id of a training run (with its test metrics logged)."),
        trigger: str = typer.Option("cli", help="Who asked (recorded on the version and in the history)."),
    ) -> None:
        """Register any training run's model as a new version (alias challenger), with lineage and metrics.

        `visionloop register` registers the run in models/; this takes any run id (e.g. from the MLflow UI).
        """
        from visionloop.config import Settings
        from visionloop.models.registry import RegistryError, run_test_metrics
        from visionloop.promotion.promote import register_run

        settings = Settings.load()
        try:
            registered = register_run(settings, run_id, run_test_metrics(settings, run_id), trigger)
        except RegistryError as error:
            _fail(str(error))
        typer.echo(f"{registered.name} version {registered.version}, aliases {', '.join(registered.aliases)}")
        if registered.record is not None:
            _show_record(_console(), registered.record)
