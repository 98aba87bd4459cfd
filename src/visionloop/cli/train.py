"""Commands for the training pipeline's steps: train, evaluate, register."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        base: str = typer.Option(None, help="Start from this model: models:/NAME@ALIAS, models:/NAME/VERSION, "
                                            "a bundle folder, a .pt state_dict or a Lightning .ckpt."),
        strategy: str = typer.Option(None, help="With --base: full | fine_tuning | feature_extraction "
                                                "(default from params.yaml train.strategy)."),
        epochs: int = typer.Option(None, help="Override train.epochs."),
    ) -> None:
        """Train on the prepared data, track the run in MLflow and write the model bundle to models/."""
        from visionloop.config import Settings
        from visionloop.training.pipeline import train_step

        overrides = {"train": {"epochs": epochs}} if epochs is not None else None
        result = train_step(Settings.load(overrides=overrides), base=base, strategy=strategy)
        typer.echo(f"run {result.run_id}: best val/acc {result.best_val_acc:.4f}, bundle in {result.out_dir}")

    @app.command("evaluate")
    def evaluate_command(
        slices: bool = typer.Option(False, "--slices", help="Also accuracy per slice (class, image-statistic "
                                    "bins, manifest metadata), flagging slices significantly below overall."),
    ) -> None:
        """Score the trained model on the test split; write metrics.json and DVC plots; log to MLflow."""
        from visionloop.config import Settings
        from visionloop.training.pipeline import evaluate_step, slices_step

        settings = Settings.load()
        metrics = evaluate_step(settings).metrics()
        typer.echo("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if slices:
            table, plot = slices_step(settings)
            columns = ["column", "slice", "n", "accuracy", "ci_low", "ci_high", "flagged"]
            typer.echo(table[[c for c in columns if c in table.columns]].to_string(index=False))
            typer.echo(f"plot: {plot}")

    @app.command("register")
    def register_command() -> None:
        """Register the trained model (models/run.json) in the MLflow registry as the challenger."""
        from visionloop.config import Settings
        from visionloop.training.pipeline import register_step

        record = register_step(Settings.load())
        typer.echo(f"{record['model_name']} version {record['version']} aliases {record['aliases'] or '-'}")
