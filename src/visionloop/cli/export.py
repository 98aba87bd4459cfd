"""``visionloop export MODEL_URI --format onnx --output DIR``: a version as ONNX, with its parity to PyTorch."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from visionloop.config import Settings


class ExportFormat(StrEnum):
    onnx = "onnx"


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        model_uri: str = typer.Argument(..., metavar="MODEL_URI", help="models:/NAME/VERSION, models:/NAME@ALIAS "
                                        "or a bundle folder (holding bundle/…)."),
        output: Path = typer.Option(..., "--output", "-o", help="Folder to write model.onnx, preprocessing.json "
                                    "and parity.json into.", file_okay=False),
        export_format: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="Export format (onnx, the "
                                                   "only one so far)."),
        int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (ONNX Runtime static "
                                  "quantization, calibrated on the gate set) with its own parity."),
    ) -> None:
        """Export a model for ONNX Runtime and check it on the version's gate set (its held-out test set).

        parity.json holds max_abs_diff (the largest probability difference from PyTorch) and
        top1_agreement (share of images with the same label); preprocessing.json the eval transform,
        classes and channels a client needs to feed the graph.
        """
        from visionloop.models.onnx_bundle import export_bundle_dir
        from visionloop.models.uris import is_model_uri

        settings = Settings.load()
        if is_model_uri(model_uri):
            from visionloop.models.cache import version_dir  # MLflow: only for the registry
            from visionloop.models.registry import RegistryError, resolve

            try:
                version = resolve(settings, model_uri)
            except (RegistryError, ValueError) as error:
                raise typer.BadParameter(str(error), param_hint="MODEL_URI") from None
            directory, name, number = version_dir(settings, version), version.name, str(version.version)
        else:
            directory = Path(model_uri)
            if not directory.is_dir():
                raise typer.BadParameter(f"{model_uri!r} is neither a models:/ URI nor a bundle folder",
                                         param_hint="MODEL_URI")
            name, number = directory.resolve().name, "local"
        try:
            result = export_bundle_dir(directory, output, int8=int8, name=name, version=number)
        except FileNotFoundError as error:  # not a bundle folder: say which file is missing, no traceback
            typer.echo(f"error: {model_uri} is not a complete bundle: {error}", err=True)
            raise typer.Exit(1) from None
        fp32 = result.parity
        typer.echo(f"{name} v{number} → {result.onnx} ({result.exporter} exporter): fp32 max_abs_diff "
                   f"{fp32.max_abs_diff:.2e}, top1_agreement {fp32.top1_agreement:.4f} on {fp32.n_images} images")
        if result.int8 is not None and result.int8_parity is not None:
            q = result.int8_parity
            typer.echo(f"int8 → {result.int8}: max_abs_diff {q.max_abs_diff:.2e}, top1_agreement "
                       f"{q.top1_agreement:.4f}")
        typer.echo(f"parity: {output / 'parity.json'}")
