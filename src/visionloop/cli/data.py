"""``visionloop data ...``: write an embedded data set, prepare the training data, check a folder,
restore the data a model version trained on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from visionloop.config import Settings

if TYPE_CHECKING:
    from visionloop.data.ingest import IngestResult
    from visionloop.data.prepare import PreparedData

console = Console()

data_app = typer.Typer(
    help="The data step: embedded data set, ingestion with validation and quarantine, the split.",
    no_args_is_help=True,
)


@data_app.command("import")
def import_command(
    dataset: Annotated[
        str | None, typer.Option(help="digits | shapes | contours (default: data.dataset of params.yaml).")
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(min=1, help="Images to generate for shapes / contours (default: data.generated_images)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write here instead of data.raw_dir (e.g. a folder to give `init --images`).")
    ] = None,
) -> None:
    """Write an embedded data set to data.raw_dir (class-per-folder); stale files there are removed.

    digits: scikit-learn's 1,797 real 8×8 digits as PNGs, upscaled to data.image_size. shapes (circle,
    square, triangle, star) and contours (open, closed): generated RGB JPEGs of mixed sizes on varied
    backgrounds, plus a manifest.csv whose columns say how each was made (slices). Byte-for-byte
    deterministic from the seed.
    """
    from visionloop.training.pipeline import import_step

    settings = Settings.load(overrides={"data": {"generated_images": count}} if count else None)
    target = output.resolve() if output else settings.path(settings.params.data.raw_dir)
    name = dataset or settings.params.data.dataset
    written = import_step(settings, dataset=name, out_dir=target)
    console.print(f"[green]wrote {written} {name} images[/green] to {target}")
    if name != "digits":
        console.print(f"their conditions are columns of {target / 'manifest.csv'}: point data.source (or "
                      "`visionloop init --images`) at it to keep them as slices")


@data_app.command("prepare")
def prepare_command() -> None:
    """Check every file of data.source, write canonical images, the split and the report.

    data.source is "digits" (the folder data.raw_dir), a class-per-folder directory or a CSV
    manifest (path,label[,meta...]). Output goes to data.prepared_dir: images/, manifest.csv,
    quarantine.csv + quarantine/, data_report.json and data_report.png.
    """
    from visionloop.data.prepare import source_from_settings
    from visionloop.training.pipeline import prepare_step

    settings = Settings.load()
    prepared = prepare_step(settings)
    _print_prepared(source_from_settings(settings), prepared)
    if prepared.n_images == 0:
        console.print("[red]no usable images: nothing to train on[/red]")
        raise typer.Exit(1)


def _print_prepared(source: Path, prepared: PreparedData) -> None:
    from visionloop.data.manifest import SPLITS

    report = prepared.report
    table = Table(title=f"prepared {source} → {prepared.out_dir}")
    table.add_column("class")
    for split in SPLITS:
        table.add_column(split, justify="right")
    per_split = report["counts_per_class_per_split"]
    for label in prepared.classes:
        table.add_row(label, *(str(per_split[s][label]) for s in SPLITS))
    table.add_row(
        "[bold]total[/bold]", *(str(report["counts_per_split"][s]) for s in SPLITS)
    )
    console.print(table)
    console.print(
        f"{report['n_images']} images from {report['total_files']} files; "
        f"imbalance ratio {report['imbalance_ratio']}; quarantined {report['n_quarantined']} "
        f"{report['quarantined_by_reason'] or ''} (see {prepared.quarantine_path})"
    )
    if report["conversions"]:
        console.print(f"converted: {report['conversions']}")
    if report["duplicates"]["label_conflicts"]:
        console.print(
            f"[yellow]{report['duplicates']['label_conflicts']} duplicates with conflicting labels[/yellow]"
        )


@data_app.command("validate")
def validate_command(
    path: Annotated[
        Path, typer.Argument(help="A class-per-folder directory, a CSV manifest, or one image file.")
    ],
    strict: Annotated[
        bool, typer.Option(help="Exit with status 1 if anything would be quarantined.")
    ] = False,
) -> None:
    """Report what `data prepare` would quarantine under PATH, and why; writes nothing."""
    from visionloop.data.images import InvalidImage, canonicalize_image_bytes
    from visionloop.data.ingest import ingest

    data = Settings.load().params.data
    limits = {"channels": data.channels, "min_side": data.min_side, "max_pixels": data.max_pixels}
    if path.is_file() and path.suffix.lower() != ".csv":
        try:
            image = canonicalize_image_bytes(path.read_bytes(), **limits)
        except InvalidImage as exc:
            console.print(f"[red]{path}: {exc.reason}[/red] ({exc.code})")
            raise typer.Exit(1 if strict else 0) from None
        note = f", converted from {image.converted_from}" if image.converted_from else ""
        console.print(f"[green]{path}: ok[/green] ({image.array.shape[1]}x{image.array.shape[0]}{note})")
        return
    result = ingest(path, **limits)
    _print_validation(path, result)
    if strict and result.quarantined:
        raise typer.Exit(1)


def _print_validation(path: Path, result: IngestResult) -> None:
    if result.quarantined:
        table = Table(title=f"would be quarantined under {path}")
        for column in ("file", "label", "reason"):
            table.add_column(column, overflow="fold")
        for entry in result.quarantined:
            table.add_row(str(entry.path), entry.label or "", entry.reason)
        console.print(table)
    conversions: dict[str, int] = {}
    for record in result.records:
        if record.converted_from:
            conversions[record.converted_from] = conversions.get(record.converted_from, 0) + 1
    colour = "yellow" if result.quarantined else "green"
    console.print(
        f"[{colour}]{result.n_files} files: {len(result.records)} usable in {len(result.classes)} classes, "
        f"{len(result.quarantined)} would be quarantined[/{colour}]"
        + (f"; conversions {conversions}" if conversions else "")
    )


@data_app.command("checkout")
def checkout_command(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS.")],
    to: Annotated[Path, typer.Option("--to", help="Folder to restore into (absent or empty).")],
) -> None:
    """Restore exactly the images a registered version trained on into --to, md5-checked.

    Reads the version's data version (the .dvc file stored with its run) and has DVC pull it from the
    cache, else the DVC remote; every restored file is hashed again against it. Exit code 1 when it
    cannot be restored (no such version, objects missing, a file that does not match its md5).
    """
    from dvc.exceptions import DvcException

    from visionloop.data.restore import DataCorrupted, DataVersionUnavailable, checkout
    from visionloop.models.registry import RegistryError

    settings = Settings.load()
    try:
        restored = checkout(settings, model_uri, to)
    except (RegistryError, ValueError, DataVersionUnavailable, DataCorrupted, FileExistsError,
            DvcException) as error:
        console.print(f"[red]{model_uri}: {error}[/red]")
        raise typer.Exit(1) from None
    source = f"{restored.fetched} objects from the remote" if restored.fetched else "all from the DVC cache"
    console.print(f"[green]restored {restored.n_files} files[/green] of data version {restored.dvc_hash} "
                  f"into {restored.directory} ({source}; md5s match)")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
