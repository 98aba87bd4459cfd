"""``visionloop label``: fill the labeling queue, show its progress, list suspected label errors."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from visionloop.config import Settings


def register(app: typer.Typer) -> None:
    label_app = typer.Typer(
        help="The labeling queue (served at /label) and suspected label errors in the training data.",
        no_args_is_help=True,
    )
    app.add_typer(label_app, name="label")

    @label_app.command("enqueue")
    def enqueue_command(
        previous: str = typer.Option(
            None,
            help="The previous model version for the disagreement rule: a version number or models:/ URI. "
            "Default: the champion before the current one in the promotion history.",
        ),
        drifted_features: str = typer.Option(
            None,
            help="Comma-separated drifted features for the drift rule. Default: test the latest "
            "monitoring.window predictions against the champion's reference profile.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Apply the sampling rules (labeling: in params.yaml) to the predictions logged since the last scan.

        Rules: low confidence, disagreement with the previous champion, drifted features, a small random share.

        Each rule is capped per hour of traffic. Safe to run as often as you like: nothing is queued twice.
        """
        from visionloop.labeling.scan import enqueue_with_registry

        settings = Settings.load()
        features = None if drifted_features is None else [f.strip() for f in drifted_features.split(",") if f.strip()]
        result, inputs = enqueue_with_registry(settings, previous=previous, drifted_features=features)
        if as_json:
            payload = {
                **result.to_dict(),
                "previous_version": inputs.previous_version,
                "drifted_features": inputs.drifted_features,
                "notes": inputs.notes,
            }
            typer.echo(json.dumps(payload, indent=2))
            return
        for note in inputs.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(
            f"examined {result.examined} predictions; queued {result.total_queued}; "
            f"previous version: {inputs.previous_version or '-'}; "
            f"drifted features: {', '.join(inputs.drifted_features) or '-'}"
        )
        typer.echo(f"{'rule':<16} {'queued':>7} {'capped':>7}")
        for reason, count in result.queued.items():
            typer.echo(f"{reason:<16} {count:>7} {result.capped[reason]:>7}")

    @label_app.command("progress")
    def progress_command() -> None:
        """Print the labeling progress as JSON (the same as GET /metrics/labeling)."""
        from visionloop.labeling.queue import LabelQueue
        from visionloop.labeling.rules import LabelingRules
        from visionloop.store.predlog import PredictionLog

        settings = Settings.load()
        queue = LabelQueue(PredictionLog(settings.db_url), LabelingRules.from_settings(settings))
        typer.echo(json.dumps(queue.progress(), indent=2))

    @label_app.command("suspects")
    def suspects_command(
        model: str = typer.Option(
            None, "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder. Default: the champion."
        ),
        split: list[str] = typer.Option(
            None, "--split", help="Only these splits of the prepared data (repeatable). Default: labeling.review.splits"
        ),
        output: Path = typer.Option(None, help="Where to save the table (CSV). Default: labeling.review.output."),
        top: int = typer.Option(20, help="How many suspects to print."),
    ) -> None:
        """List training images whose given label the model strongly disputes (confident learning).

        Out-of-fold predictions of a logistic regression on the model's embeddings; a person confirms or
        corrects them on /label/review, and corrections become a new DVC data version.
        """
        from visionloop.labeling.suspects import save_suspects, suspects_for_prepared
        from visionloop.models.spec import load_model
        from visionloop.models.uris import alias_uri

        settings = Settings.load()
        try:
            servable = load_model(settings, model or alias_uri(settings.model_name))
        except FileNotFoundError as error:
            raise typer.BadParameter(str(error), param_hint="--model") from None
        try:
            frame = suspects_for_prepared(settings, servable, splits=split or None)
        except FileNotFoundError as error:
            typer.echo(f"error: no prepared data ({error}); run `visionloop data prepare`", err=True)
            raise typer.Exit(2) from None
        target = save_suspects(settings, frame, output)
        typer.echo(
            f"{len(frame)} suspected label errors (model {servable.name} v{servable.version}, "
            f"{frame.attrs.get('method')}); saved to {target}"
        )
        if len(frame):
            typer.echo(f"{'given':>6} {'suggest':>8} {'p(given)':>9} {'p(sugg.)':>9}  {'split':<6} path")
            for row in frame.head(top).itertuples():
                typer.echo(
                    f"{row.given_label:>6} {row.suggested_label:>8} {row.self_confidence:>9.3f} "
                    f"{row.suggested_confidence:>9.3f}  {row.split:<6} {row.path}"
                )
