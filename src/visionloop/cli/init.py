"""``visionloop init DIR --images SOURCE``: a ready project around a folder (or manifest) of one's own images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init_command(
        directory: Annotated[Path, typer.Argument(help="The new project's folder (created; must be empty).")],
        images: Annotated[
            Path, typer.Option(help="A class-per-folder directory or a CSV manifest path,label[,meta...].")
        ],
    ) -> None:
        """Create a project for your images: git + DVC, the images copied and DVC-tracked, params.yaml chosen
        from the data (channels, size, augmentations, epochs), dvc.yaml, a README and reports/init.md saying
        what was detected and why. Then `cd DIR && dvc repro`."""
        from visionloop.project.create import init_project

        try:
            result = init_project(directory, images)
        except (FileExistsError, FileNotFoundError, ValueError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(result.report)
        typer.echo(f"\nproject ready in {result.root}: cd {directory} && dvc repro")
