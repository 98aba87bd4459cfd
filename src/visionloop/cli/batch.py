"""The batch inference command: `visionloop predict-batch INPUT --output FILE_OR_DIR`."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from visionloop.config import Settings


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise typer.BadParameter(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def register(app: typer.Typer) -> None:
    @app.command("predict-batch")
    def predict_batch_command(
        input_path: Path = typer.Argument(..., metavar="INPUT", help="A folder of images (searched recursively) "
                                          "or a CSV manifest with a header: path[,label][,meta...]."),
        output: str = typer.Option(..., "--output", "-o", help="A .parquet file, or a folder of Parquet parts "
                                   "(any other name). {model} and {version} are filled in from the model."),
        model_uri: str = typer.Option(None, help="Registered model to use (default: models:/<registry.model_name>"
                                      "@champion)."),
        bundle: Path = typer.Option(None, help="Use a local model bundle folder (holding bundle/…) instead of "
                                    "the registry.", exists=True, file_okay=False),
        batch_size: int = typer.Option(None, min=1, help="Images per forward pass (default: batch.batch_size)."),
        num_workers: int = typer.Option(None, min=0, help="DataLoader worker processes that decode images "
                                        "(default: batch.num_workers)."),
        part_size: int = typer.Option(None, min=1, help="Rows per committed Parquet part, the unit of resume "
                                      "(default: batch.part_size)."),
        shard: str = typer.Option(None, help="Run only shard I of N (e.g. 0/4), for running shards on several "
                                  "machines; rerun without --shard afterwards to consolidate a .parquet output."),
        log_predictions: bool = typer.Option(None, "--log-predictions/--no-log-predictions", help="Also write "
                                             "each prediction to the prediction log (default: "
                                             "batch.log_predictions)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """Predict every image of INPUT into Parquet, one row per image; rerun to resume after an interruption.

        Files that cannot be read get a row with status "error" and the reason. Already predicted
        images are skipped, so rerunning after a crash finishes the job without duplicates.
        """
        from visionloop.batch.model import load_model
        from visionloop.batch.output import OutputConflict, expand_output
        from visionloop.batch.predict import BatchOptions, predict_batch
        from visionloop.store.predlog import PredictionLog

        shard_spec = _parse_shard(shard)
        given = {"batch_size": batch_size, "num_workers": num_workers, "part_size": part_size,
                 "log_predictions": log_predictions}
        settings = Settings.load()
        settings = settings.with_overrides({"batch": {k: v for k, v in given.items() if v is not None}})
        model = load_model(settings, model_uri, bundle=bundle)
        target = expand_output(output, model.name, model.version)
        use_log = settings.params.batch.log_predictions
        try:
            summary = predict_batch(
                model,
                input_path,
                target,
                BatchOptions.from_params(settings.params),
                log=PredictionLog(settings.db_url) if use_log else None,
                progress=progress,
                shard=shard_spec,
            )
        except (OutputConflict, FileNotFoundError, ValueError) as exc:  # a readable reason, not a traceback
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        codes = ", ".join(f"{code} {n}" for code, n in sorted(summary.error_codes.items()))
        typer.echo(
            f"{model.name} v{model.version}: {summary.processed} predicted ({summary.ok} ok, {summary.errors} errors"
            f"{': ' + codes if codes else ''}), {summary.skipped} already done, "
            f"{summary.images_per_second:.0f} img/s → {target}"
        )
        if use_log:
            typer.echo(f"{summary.logged} predictions logged to the prediction log")
