"""``visionloop monitor``, ``performance`` and ``slices``: watch the champion in production."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from visionloop.monitoring.performance import PerformanceResult

MODEL_HELP = "models:/NAME/VERSION, models:/NAME@ALIAS or a bundle folder; default: the registry's champion."


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(1)


def _echo_performance(result: PerformanceResult) -> None:
    typer.echo(f"performance ({result.source}): {result.message}")
    if result.status != "checked":
        return
    table = result.comparison()
    typer.echo(f"{'metric':<14} {'training':>9} {'now':>9} {'delta':>8}")
    for row in table.itertuples():
        typer.echo(f"{row.metric:<14} {row.training:>9.4f} {row.production:>9.4f} {row.delta:>+8.4f}")
    for name, path in result.files.items():
        typer.echo(f"{name}: {path}")


def register(app: typer.Typer) -> None:
    @app.command("monitor")
    def monitor_command(
        window: int = typer.Option(None, "--window", help="Latest N predictions (default: monitoring.window)."),
        since: datetime = typer.Option(None, "--since", help="Only predictions since this time (ISO, UTC)."),
        model: str = typer.Option(None, "--model", help="models:/NAME/VERSION or @ALIAS; default: the champion."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        alert: bool = typer.Option(
            False, "--alert", help="Run the Prefect monitor flow instead: on drift or degradation it records the "
            "alert and emits the event that starts a retrain (the event needs a Prefect server: `visionloop up`)."
        ),
        performance: bool = typer.Option(
            True, "--performance/--no-performance", help="Also score the predictions that have feedback labels."
        ),
        stream: str = typer.Option(None, "--stream", metavar="ID", help="Only this video stream's frames (the "
                                   "stream_id `visionloop stream` or /stream logged); its checks are its own."),
    ) -> None:
        """Check the champion's latest predictions for drift against its reference profile.

        Writes Evidently's report, the JSON verdict and the images behind it under
        <state>/monitoring/<timestamp>/, logs them to MLflow and the Evidently workspace. Without --alert
        nothing is emitted: the alert payload is printed. Exit code 0 with or without drift.
        """
        from visionloop.config import Settings
        from visionloop.monitoring.monitor import run_monitor
        from visionloop.monitoring.monitored import NoModelToMonitor

        settings = Settings.load()
        if alert:
            if model is not None or since is not None or not performance:
                _fail(ValueError("--alert runs the monitor flow on the champion: drop --model, --since, "
                                 "--no-performance"))
            from visionloop.cli.orchestration import run_monitor_flow

            outcome = run_monitor_flow(settings, window, stream)
            typer.echo(json.dumps(outcome, indent=2, default=str) if as_json else outcome.get("message", ""))
            return
        try:
            result = run_monitor(settings, model, window=window, since=since, performance=performance,
                                 stream_id=stream)
        except (NoModelToMonitor, FileNotFoundError, ValueError) as error:
            _fail(error)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
            return
        typer.echo(f"{result.model_name} v{result.model_version}: {result.message}")
        if result.files:
            typer.echo(f"report: {result.files['index']}  (Evidently: {result.files['report']})")
            typer.echo(f"MLflow run: {result.mlflow_run_id}  Evidently snapshot: {result.evidently_snapshot_id}")
        if result.performance is not None:
            _echo_performance(result.performance)
        payload = result.alert
        typer.echo("alert: " + (json.dumps(payload, default=str) if payload else "none"))

    @app.command("performance")
    def performance_command(
        data: Path = typer.Option(
            None, "--data", help="A labeled folder, CSV manifest (path,label) or prepared data set; "
            "default: the predictions that received /feedback labels."
        ),
        model: str = typer.Option(None, "--model", help=MODEL_HELP),
        all_versions: bool = typer.Option(
            False, "--all-versions", help="Feedback on every version's predictions, not just this version's."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Accuracy, per-class P/R/F1, confusion matrix, ROC AUC and ECE on labeled data vs training time.

        Flags a degradation when accuracy dropped by more than monitoring.degradation_threshold (and not
        by chance); logs the metrics and plots to MLflow's monitoring experiment.
        """
        from visionloop.config import Settings
        from visionloop.monitoring.monitored import NoModelToMonitor, load_monitored
        from visionloop.monitoring.performance import monitor_performance, performance_from_folder

        settings = Settings.load()
        try:
            monitored = load_monitored(settings, model)
            if data is None:
                result = monitor_performance(settings, monitored.model, all_versions=all_versions)
            else:
                result = performance_from_folder(settings, monitored.model, data)
        except (NoModelToMonitor, FileNotFoundError, ValueError) as error:
            _fail(error)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
        else:
            _echo_performance(result)

    @app.command("slices")
    def slices_command(
        model: str = typer.Option(None, "--model", help=MODEL_HELP),
        data: Path = typer.Option(
            None, "--data", help="A prepared data set (its test split), a folder with manifest.csv, a CSV "
            "manifest (path,label[,meta...]) or a class-per-folder directory; default: data.prepared_dir."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
    ) -> None:
        """Accuracy per slice: per class, per bin of brightness/contrast/sharpness, per metadata column.

        A slice is flagged when a one-sided Fisher exact test says it is less accurate than the rest
        (Bonferroni over the slices, 5 % family-wise). Table and plot are logged to MLflow's monitoring experiment.
        """
        from visionloop.config import Settings
        from visionloop.monitoring.labeled import load_labeled
        from visionloop.monitoring.monitored import NoModelToMonitor, load_monitored
        from visionloop.monitoring.slice_report import log_slice_report, slice_report

        settings = Settings.load()
        try:
            monitored = load_monitored(settings, model)
            labeled = load_labeled(settings, data, channels=monitored.model.channels)
            table, plot = slice_report(
                settings, monitored.model, labeled.images, labeled.labels, labeled.metadata,
                reference=monitored.reference,
            )
        except (NoModelToMonitor, FileNotFoundError, ValueError) as error:
            _fail(error)
        run_id = log_slice_report(settings, monitored.model, table, plot, labeled.source)
        if as_json:
            typer.echo(table.to_json(orient="records", indent=2))
            return
        typer.echo(f"{monitored.name} v{monitored.version} on {len(labeled.images)} images ({labeled.source})")
        typer.echo(f"{'slice':<28} {'n':>5} {'accuracy':>8} {'95% CI':>15}  flagged")
        for row in table.itertuples():
            name = "overall" if row.column == "overall" else f"{row.column}={row.slice}"
            typer.echo(f"{name:<28} {row.n:>5} {row.accuracy:>8.3f} {row.ci_low:>7.3f}–{row.ci_high:<7.3f}  "
                       f"{'FLAGGED' if row.flagged else ''}")
        typer.echo(f"plot: {plot}\nMLflow run: {run_id}")
