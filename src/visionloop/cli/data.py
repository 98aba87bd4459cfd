"""``visionloop data ...``: write the embedded digits, prepare the training data, check a folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from visionloop.data.ingest import IngestResult

console = Console()

data_app = typer.Typer(
    help="The data step: embedded data set, ingestion with validation and quarantine, the split.",
    no_args_is_help=True,
)


@data_app.command("import")
def import_command() -> None:
    """Write scikit-learn's 1,797 real 8×8 digits as PNGs to data.raw_dir (class-per-folder).

    Upscaled to data.image_size, byte-for-byte deterministic; stale files there are removed.
    """
    from visionloop.config import Settings
    from visionloop.data.ingest import import_digits

    settings = Settings.load()
    data = settings.section("data")
    raw_dir = settings.path(data["raw_dir"])
    count = import_digits(raw_dir, int(data.get("image_size", 32)))
    console.print(f"[green]wrote {count} digit images[/green] to {raw_dir}")


@data_app.command("prepare")
def prepare_command() -> None:
    """Check every file of data.source, write canonical images, the split and the report.

    data.source is "digits" (the folder data.raw_dir), a class-per-folder directory or a CSV
    manifest (path,label[,meta...]). Output goes to data.prepared_dir: images/, manifest.csv,
    quarantine.csv + quarantine/, data_report.json and data_report.png.
    """
    from visionloop.config import Settings
    from visionloop.data.ingest import prepare_from_settings, source_from_settings

    settings = Settings.load()
    source = source_from_settings(settings)
    prepared = prepare_from_settings(settings)
    report = prepared.report
    table = Table(title=f"prepared {source} → {prepared.out_dir}")
    table.add_column("class")
    for split in ("train", "val", "test"):
        table.add_column(split, justify="right")
    per_split = report["counts_per_class_per_split"]
    for label in prepared.classes:
        table.add_row(label, *(str(per_split[s][label]) for s in ("train", "val", "test")))
    table.add_row(
        "[bold]total[/bold]", *(str(report["counts_per_split"][s]) for s in ("train", "val", "test"))
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
    if prepared.n_images == 0:
        console.print("[red]no usable images: nothing to train on[/red]")
        raise typer.Exit(1)


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
    from visionloop.config import Settings
    from visionloop.data.ingest import InvalidImage, canonicalize_image_bytes, ingest

    data = Settings.load().section("data")
    limits = {
        "channels": int(data["channels"]),
        "min_side": int(data["min_side"]),
        "max_pixels": int(data["max_pixels"]),
    }
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


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
