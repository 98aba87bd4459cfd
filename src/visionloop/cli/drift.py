"""``visionloop drift``: ad-hoc drift check between two image folders, or a stored profile and a folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel


def champion_model(settings: Settings) -> ServableModel | None:
    """The registry's champion, or None (with a note on stderr) when there is no registry or no champion."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        typer.echo("note: no model registry yet; image statistics only (use --model for more)", err=True)
        return None  # before importing MLflow: seconds saved where there is nothing to ask
    from mlflow.exceptions import MlflowException

    from visionloop.models.cache import load_registered
    from visionloop.models.registry import RegistryError
    from visionloop.models.uris import alias_uri

    try:
        model = load_registered(settings, alias_uri(settings.model_name))
    except (RegistryError, MlflowException) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        typer.echo(f"note: no champion of {settings.model_name} ({first_line}); image statistics only", err=True)
        return None
    typer.echo(f"note: using the champion {model.name} v{model.version} for embedding and output features", err=True)
    return model


def register(app: typer.Typer) -> None:
    @app.command("drift")
    def drift_command(
        reference: Path = typer.Argument(
            ..., help="Reference: a folder of images (searched recursively) or a reference_profile.parquet."
        ),
        current: Path = typer.Argument(..., help="Current: a folder of images (searched recursively)."),
        model: str = typer.Option(
            None,
            "--model",
            help="models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder: adds the model's reduced "
            "embedding and outputs to the features. Default: the registry's champion, if there is one.",
        ),
        stats_only: bool = typer.Option(
            False, "--stats-only", help="Image statistics only, even when there is a champion."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON (machine-readable)."),
        report: Path = typer.Option(None, "--report", help="Also write Evidently's HTML report to this file."),
    ) -> None:
        """Test whether CURRENT images drifted from REFERENCE (Bonferroni-corrected per-feature tests).

        Exit code 0 whether or not drift is found; non-zero only on error.
        """
        # Each path imports what it needs: torch only with a model, MLflow only for a registry, Evidently
        # only for --report (seconds each on a small machine; the verdict itself takes milliseconds).
        from visionloop.config import Settings
        from visionloop.monitoring.drift import DriftThresholds, verdict_json
        from visionloop.monitoring.folders import ImageLimits, check_folders

        settings = Settings.load()
        params = settings.params
        try:
            servable = None
            if model:
                from visionloop.models.spec import load_model

                servable = load_model(settings, model)
            elif not stats_only:
                servable = champion_model(settings)
            if servable is not None and params.monitoring.torch_threads is not None:
                import torch  # loaded with the model already

                # torch's default (a thread per core) fights other work for 2 cores: 3x slower forward under load
                torch.set_num_threads(params.monitoring.torch_threads)
            channels = servable.channels if servable else params.data.channels
            result = check_folders(
                reference,
                current,
                limits=ImageLimits(channels, params.data.min_side, params.data.max_pixels),
                thresholds=DriftThresholds.of(params.monitoring),
                n_components=params.monitoring.embedding_components,
                model=servable,
            )
        except (FileNotFoundError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        for path, reason in result.refused:
            typer.echo(f"skipped {path}: {reason}", err=True)
        if report is not None:
            from visionloop.monitoring.evidently_report import drift_report, save_report_html

            save_report_html(drift_report(result.reference, result.current, result.verdict), report)
            typer.echo(f"report: {report}", err=True)
        verdict = result.verdict
        if as_json:
            typer.echo(verdict_json(verdict))
            return
        typer.echo(
            f"drift: {'yes' if verdict.drift else 'no'}  severity: {verdict.severity}  "
            f"drifted: {len(verdict.drifted_features)}/{len(verdict.features)} features  "
            f"alpha: {verdict.alpha} (Bonferroni)  "
            f"reference: {verdict.n_reference}  current: {verdict.n_current}"
        )
        typer.echo(f"{'feature':<16} {'test':<16} {'statistic':>9} {'p-value':>10} {'threshold':>10}  drifted")
        for f in verdict.features:
            p_value = "-" if f.p_value is None else f"{f.p_value:.3g}"
            typer.echo(
                f"{f.feature:<16} {f.test:<16} {f.statistic:>9.3f} {p_value:>10} {f.threshold:>10.3g}  "
                f"{'YES' if f.drifted else 'no'}"
            )
