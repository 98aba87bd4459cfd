"""``visionloop shadow report``: what the challenger's shadow predictions on live traffic say (``promotion.shadow``)."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    shadow_app = typer.Typer(help="Shadow scoring: the challenger's answers on live traffic beside the champion's.",
                             no_args_is_help=True)
    app.add_typer(shadow_app, name="shadow")

    @shadow_app.command("report")
    def report_command(
        challenger: str = typer.Option(None, "--challenger", help="The challenger version (default: the alias)."),
        champion: str = typer.Option(None, "--champion", help="The champion version (default: the alias)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Agreement, per-class flips, confidence shift, latency ratio and the challenger's drift verdict against its
        own reference, from the shadow predictions logged by `visionloop serve` (serving.shadow)."""
        from visionloop.config import Settings
        from visionloop.contracts import CHALLENGER, CHAMPION
        from visionloop.models.registry import aliases, model_version
        from visionloop.promotion.shadow import challenger_facts, shadow_report

        settings = Settings.load()
        current = aliases(settings)
        challenger = challenger or current.get(CHALLENGER)
        champion = champion or current.get(CHAMPION)
        if challenger is None or champion is None:
            typer.echo(f"error: {settings.model_name} has no {CHALLENGER if challenger is None else CHAMPION}; "
                       "name the versions with --challenger/--champion", err=True)
            raise typer.Exit(code=1)
        facts = challenger_facts(settings, model_version(settings, challenger))
        report = shadow_report(settings, champion, challenger, **facts)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
            return
        typer.echo(report.text())

