"""``visionloop diff MODEL_A MODEL_B [IMAGES]``: the prediction-diff gallery of any two models.

The same gallery every gate decision writes (``visionloop.promotion.diff_gallery``), for any pair: heavy
imports (torch, MLflow) happen inside the command so ``visionloop --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

MODEL_HELP = "a version number or alias of the project's model (3, champion), a models:/ URI, or a bundle folder"


def register(app: typer.Typer) -> None:
    @app.command("diff")
    def diff_command(
        model_a: str = typer.Argument(..., help=f"Whose answers are 'before': {MODEL_HELP}."),
        model_b: str = typer.Argument(..., help="Whose answers are 'after' (the same forms)."),
        images: Path = typer.Argument(
            None, help="A folder of images (class-named first folders give true labels) or a CSV manifest "
            "(path[,label]); default: the gate set the promotion gate would judge the two on."
        ),
        out: Path = typer.Option(
            None, "--out", help="Write diff.html, diff.png and diff.json here (default: a new folder under "
            "<state dir>/reports/diffs, listed on the labeling review page)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary (diff.json) instead of a table."),
    ) -> None:
        """Show which images change their predicted class between MODEL_A and MODEL_B, grouped by flip type.

        Writes diff.html (a static page), diff.png (a montage) and diff.json (the counts per flip type A→B).

        Each image is shown with both answers, both confidences and the true label where known.
        """
        from visionloop.config import Settings
        from visionloop.models.registry import RegistryError
        from visionloop.promotion.diff_gallery import diff_models
        from visionloop.promotion.diff_inputs import diff_images, load_compared

        settings = Settings.load()
        try:
            a, b = load_compared(settings, model_a), load_compared(settings, model_b)
            compared = diff_images(settings, a, b, images)
            summary = diff_models(settings, a.model, b.model, compared.images, compared.labels, out,
                                  title=f"visionloop diff {model_a} {model_b}")
        except (FileNotFoundError, ValueError, RegistryError) as error:
            typer.echo(f"error: {str(error).splitlines()[0]}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
            return
        typer.echo(f"{summary.model_a} → {summary.model_b} on {compared.source}")
        for skipped in compared.skipped[:5]:
            typer.echo(f"  skipped {skipped}", err=True)
        if len(compared.skipped) > 5:
            typer.echo(f"  ... and {len(compared.skipped) - 5} more unreadable inputs skipped", err=True)
        typer.echo(f"{summary.n_flipped} of {summary.n_images} images change their answer: {summary.fixed} fixed, "
                   f"{summary.broken} broke a known label ({summary.n_labeled} labeled)")
        for group in summary.groups[:10]:
            typer.echo(f"  {group.flip:<16} {group.count:>5}   fixed {group.fixed:>4}   broken {group.broken:>4}")
        if len(summary.groups) > 10:
            typer.echo(f"  ... {len(summary.groups) - 10} more flip types in diff.json")
        typer.echo(f"gallery: {Path(str(summary.folder)) / 'diff.html'} (montage diff.png, counts diff.json)")
