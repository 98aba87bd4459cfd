"""Commands for the embedded stack: up, down, ui."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up_command(
        serve: bool = typer.Option(True, help="Start the REST server (follows the champion alias)."),
        deployments: bool = typer.Option(True, help="Serve the Prefect deployments (schedules, drift trigger)."),
    ) -> None:
        """Start the embedded stack on 127.0.0.1: Prefect server, MLflow server, Evidently UI, REST server and
        the project's deployments. Servers given by PREFECT_API_URL / MLFLOW_TRACKING_URI are used instead."""
        from visionloop.settings import Settings
        from visionloop.stack import up

        urls = up(Settings.load(), serve=serve, deployments=deployments, echo=typer.echo)
        typer.echo(f"\nPrefect UI  {urls.prefect_ui}\nMLflow UI   {urls.mlflow}\nEvidently   {urls.evidently}\n"
                   f"REST API    {urls.serve}/docs\nStop with: visionloop down")

    @app.command("demo")
    def demo_command(
        keep: bool = typer.Option(False, help="Leave the stack running afterwards, to browse the UIs."),
    ) -> None:
        """Run the whole lifecycle on the embedded digits: train v1, serve, drift, alert, retrain v2, promote,
        hot-swap — then print what happened and stop what it started."""
        from flows.demo import run_demo

        run_demo(keep=keep, echo=typer.echo)

    @app.command("down")
    def down_command() -> None:
        """Stop what `visionloop up` started (by PID, nothing else)."""
        from visionloop.settings import Settings
        from visionloop.stack import down

        if not down(Settings.load(), echo=typer.echo):
            typer.echo("nothing to stop")

    @app.command("ui")
    def ui_command(open_browser: bool = typer.Option(False, "--open", help="Open the UIs in a web browser.")) -> None:
        """Print the addresses of the Prefect, MLflow and Evidently UIs and the REST API docs."""
        import webbrowser

        from visionloop.settings import Settings
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
