"""Commands for the whole loop: the embedded stack (up, down, ui), retrain, and the demo."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported inside the commands: `visionloop --help` stays fast
    from visionloop.config import Settings


PROFILE_HELP = "embedded | team (PostgreSQL, MLflow with proxied artifacts, a Prefect worker); default: stack.profile."


def profile_settings(profile: str | None) -> Settings:
    """The project's settings with ``stack.profile`` replaced by the command line's ``--profile``, validated like
    params.yaml (an unknown profile stops with the allowed values)."""
    from visionloop.config import Settings
    from visionloop.params import ParamsError

    settings = Settings.load()
    try:
        return settings.with_overrides({"stack": {"profile": profile}}) if profile else settings
    except ParamsError as error:
        raise typer.BadParameter(str(error).splitlines()[-1].strip(), param_hint="--profile") from None


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up_command(
        serve: bool = typer.Option(True, help="Start the REST server (follows the champion alias)."),
        deployments: bool = typer.Option(True, help="Start the Prefect deployments (schedules, drift trigger)."),
        profile: str | None = typer.Option(None, help=PROFILE_HELP),
    ) -> None:
        """Start the stack on 127.0.0.1: Prefect server, MLflow server, Evidently UI, REST server and the project's
        deployments — embedded (SQLite, served deployments) or team (PostgreSQL, proxied artifacts, a work pool
        with a worker). Servers given by PREFECT_API_URL / MLFLOW_TRACKING_URI are used instead."""
        from visionloop.stack_team import client_environment_file, start

        settings = profile_settings(profile)
        urls, _ = start(settings, serve=serve, deployments=deployments, echo=typer.echo)
        typer.echo(f"\nPrefect UI  {urls.prefect_ui}\nMLflow UI   {urls.mlflow}\nEvidently   {urls.evidently}\n"
                   f"REST API    {urls.serve}/docs\nStop with: visionloop down")
        if settings.params.stack.profile == "team":
            typer.echo(f"Use it from a shell: source {client_environment_file(settings)}")

    @app.command("demo")
    def demo_command(
        keep: bool = typer.Option(False, help="Leave the stack running afterwards, to browse the UIs."),
        profile: str | None = typer.Option(None, help=PROFILE_HELP),
    ) -> None:
        """Run the whole lifecycle on the project's data (the embedded digits, or your images after `visionloop
        init`): train v1, serve, drift, alert, retrain v2, promote,
        hot-swap — then print what happened and stop what it started."""
        from visionloop.cli.orchestration import run_demo

        run_demo(profile_settings(profile), keep=keep, echo=typer.echo)

    @app.command("retrain")
    def retrain_command() -> None:
        """Retrain now, as the drift alert would: new data version with the feedback labels, fine-tune the
        champion (retrain.strategy), register, gate. Runs the `retrain` Prefect flow in this process."""
        from visionloop.cli.orchestration import run_retrain

        result = run_retrain(trigger="cli")
        typer.echo(result)

    @app.command("alert")
    def alert_command(
        severity: str = typer.Option("warning", help="none | warning | critical (critical overrides the cooldown)."),
        reason: str = typer.Option("raised by hand", help="Why, for the record."),
    ) -> None:
        """Raise a drift alert by hand, exactly as `monitor` does: recorded, and the retrain event emitted unless
        the cooldown or a running retrain suppresses it. Needs a Prefect server (PREFECT_API_URL or `up`)."""
        from visionloop.cli.orchestration import raise_alert
        from visionloop.config import Settings

        settings = Settings.load()
        payload = {"drift": True, "severity": severity, "reason": reason, "model_name": settings.model_name}
        decision = raise_alert(settings, payload)
        typer.echo(f"alert {decision.alert_id}: {decision.action} ({decision.reason})")

    @app.command("alerts")
    def alerts_command(limit: int = typer.Option(20, help="How many, newest first.")) -> None:
        """Show the recorded drift alerts and what was done about each."""
        from visionloop.config import Settings
        from visionloop.healing.alerts import AlertLog

        settings = Settings.load()
        table = AlertLog(settings.db_url).history(settings.model_name, limit=limit)
        if table.empty:
            typer.echo("no alerts recorded")
            return
        columns = ["created_at", "severity", "action", "reason", "outcome"]
        typer.echo(table[columns].to_string(index=False))

    @app.command("down")
    def down_command() -> None:
        """Stop what `visionloop up` started (by PID, nothing else)."""
        from visionloop.config import Settings
        from visionloop.stack import down

        if not down(Settings.load(), echo=typer.echo):
            typer.echo("nothing to stop")

    @app.command("ui")
    def ui_command(open_browser: bool = typer.Option(False, "--open", help="Open the UIs in a web browser.")) -> None:
        """Print the addresses of the Prefect, MLflow and Evidently UIs and the REST API docs."""
        import webbrowser

        from visionloop.config import Settings
        from visionloop.stack import reachable, urls

        u = urls(Settings.load())
        for name, url, health in (
            ("Prefect", u.prefect_ui, f"{u.prefect_api}/health"),
            ("MLflow", u.mlflow, f"{u.mlflow}/health"),
            ("Evidently", u.evidently, f"{u.evidently}/api/projects"),
            ("REST API", f"{u.serve}/docs", f"{u.serve}/health"),
        ):
            state = "up" if reachable(health) else "down"
            typer.echo(f"{name:<10} {url:<40} {state}")
            if open_browser and state == "up":
                webbrowser.open(url)
