"""Training: a Lightning run on a prepared manifest, tracked in MLflow, saved as a model bundle.

Transfer learning starts from a base model (a registry version or a local checkpoint) with one of
the strategies in ``visionloop.training.model.STRATEGIES``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.strategies import DDPStrategy

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES, DATA_VERSION_FILE, DataVersion
from visionloop.data.dvcrepo import keep_data_version
from visionloop.data.lineage import data_version as compute_data_version
from visionloop.data.lineage import git_commit, git_dirty
from visionloop.data.manifest import read_manifest
from visionloop.data.prepare import source_from_settings
from visionloop.data.snapshot import PRODUCTION_ORIGIN
from visionloop.models.backbones import load_pretrained
from visionloop.models.bundle import ServableModel
from visionloop.models.cache import load_registered
from visionloop.models.tracking import flatten, log_dataset, open_run
from visionloop.models.uris import is_model_uri
from visionloop.monitoring.features import build_reference_profile
from visionloop.training.datamodule import ImageDataModule, class_names, load_images
from visionloop.training.model import ARCHITECTURE_KEYS, ImageClassifier, architecture_from_params
from visionloop.training.preprocess import pipeline_to_json

PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]


@dataclass
class BaseWeights:
    """Weights to start from, with what it takes to rebuild their network."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    classes: list[str] | None
    uri: str


@dataclass
class TrainResult:
    run_id: str
    out_dir: Path
    bundle_dir: Path
    classes: list[str]
    best_val_acc: float
    data_version: DataVersion

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "bundle_dir": str(self.bundle_dir),
            "classes": self.classes,
            "best_val_acc": self.best_val_acc,
            "data_version": self.data_version.dvc_hash,
        }


def load_base(base: str, settings: Settings) -> BaseWeights:
    """Read base weights from ``models:/…``, a bundle folder, a ``.pt`` state_dict or a Lightning ``.ckpt``."""

    if is_model_uri(base):
        model = load_registered(settings, base)
        return BaseWeights(model.network.state_dict(), model.config, model.classes, f"{base} (v{model.version})")
    path = Path(base)
    if path.is_dir():
        config = json.loads((path / BUNDLE_FILES["config"]).read_text())
        classes = json.loads((path / BUNDLE_FILES["classes"]).read_text())
        state = torch.load(path / BUNDLE_FILES["state_dict"], map_location="cpu", weights_only=True)
        return BaseWeights(state, config, classes, str(path))
    if not path.is_file():
        raise FileNotFoundError(f"base model {base!r} is neither a models:/ URI nor an existing file or bundle")
    if path.suffix == ".ckpt":
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hp = checkpoint.get("hyper_parameters", {})
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        config = {k: hp[k] for k in ARCHITECTURE_KEYS if k in hp}  # no backbone key: a small_cnn checkpoint
        return BaseWeights(state, config, None, str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    config_path = path.with_name("model_config.json")
    if not config_path.exists():
        raise FileNotFoundError(f"a .pt state_dict needs its architecture beside it: {config_path}")
    return BaseWeights(state, json.loads(config_path.read_text()), None, str(path))


def build_classifier(settings: Settings, classes: list[str], base: BaseWeights | None, strategy: str):
    """The LightningModule: fresh from params (pretrained backbone weights loaded if ``model.pretrained`` names
    some), or the base architecture with its weights loaded. Without either, the strategy is ``full``."""

    train_params = settings.params.train
    arch = {**base.config, "num_classes": len(classes)} if base else architecture_from_params(settings.params,
                                                                                              len(classes))
    pretrained = None if base else settings.params.model.pretrained
    transfer = base is not None or pretrained is not None
    lr = train_params.lr
    if transfer and strategy == "fine_tuning":
        lr *= train_params.fine_tune_lr_factor
    model = ImageClassifier(
        **arch,
        lr=lr,
        weight_decay=train_params.weight_decay,
        epochs=train_params.epochs,
        warmup_epochs=train_params.warmup_epochs,
        strategy=strategy if transfer else "full",
        fine_tune_blocks=train_params.fine_tune_blocks,
    )
    if pretrained is not None:
        load_pretrained(model.net, pretrained, settings.root)
    if base:
        state = base.state_dict
        same_head = base.classes == classes and base.config["num_classes"] == len(classes)
        if not same_head:  # a new head for a new set of classes; the backbone transfers
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        model.net.load_state_dict(state, strict=same_head)
    model.apply_strategy()
    return model


def train(
    settings: Settings,
    *,
    prepared_dir: Path | None = None,
    out_dir: Path | None = None,
    base: str | None = None,
    strategy: str | None = None,
    data_version: DataVersion | None = None,
    trigger: str = "cli",
    run_name: str | None = None,
) -> TrainResult:
    """Train on the prepared data set, log the run to MLflow, write the model bundle to ``out_dir``."""


    train_params = settings.params.train
    prepared_dir = prepared_dir or settings.path(settings.params.data.prepared_dir)
    out_dir = out_dir or settings.path("models")
    base = base if base is not None else train_params.base
    strategy = strategy or train_params.strategy
    data_version = data_version or compute_data_version(settings.root, source_from_settings(settings))

    pl.seed_everything(settings.seed, workers=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    manifest = read_manifest(prepared_dir)
    base_weights = load_base(base, settings) if base else None
    classes = base_weights.classes if base_weights and base_weights.classes else class_names(manifest)
    classes = classes if set(class_names(manifest)) <= set(classes) else class_names(manifest)
    datamodule = ImageDataModule(
        manifest,
        classes,
        settings.params.augment.train,
        settings.params.augment.eval,
        batch_size=train_params.batch_size,
        num_workers=train_params.num_workers,
        seed=settings.seed,
        limit_train_fraction=train_params.limit_train_fraction,
        origin_weights=train_params.origin_weights,
    )
    model = build_classifier(settings, classes, base_weights, strategy)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "checkpoints").mkdir(parents=True)
    tags = {
        "git_commit": git_commit(settings.root),
        "git_dirty": str(git_dirty(settings.root)).lower(),
        **data_version.as_tags(),
        "params_hash": settings.params_hash,
        "base_model": base_weights.uri if base_weights else "none",
        "strategy": model.hparams.strategy,
        "trigger": trigger,
    }
    strategy = model.hparams.strategy
    name = run_name or ("train" if base_weights is None else f"train {strategy}")
    description = describe_training(settings, manifest, data_version, base_weights, strategy, model.hparams.lr,
                                    trigger)
    with open_run(settings, run_name=name, tags=tags, description=description) as run:
        mlflow.log_params(flatten(settings.params.model_dump(mode="json")))
        mlflow.log_params({"effective.lr": model.hparams.lr, "effective.strategy": strategy,
                           "effective.n_classes": len(classes)})
        _log_data_report(prepared_dir)
        log_dataset(manifest.drop(columns=["abs_path"], errors="ignore"), name=f"{settings.model_name} data",
                    source=str(settings.path(data_version.path)), context="training",
                    tags={**data_version.as_tags(), "n_images": str(len(manifest))})
        # Kept in DVC's cache and remote, its .dvc file with the run: `visionloop data checkout` restores it.
        if (dvc_file := keep_data_version(settings, data_version)) is not None:
            mlflow.log_text(dvc_file, DATA_VERSION_FILE)
        checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val/acc",
                                     mode="max", save_top_k=1, save_last=False)
        trainer = pl.Trainer(
            max_epochs=train_params.epochs,
            accelerator="cpu",
            devices=train_params.devices,
            num_nodes=train_params.num_nodes,
            strategy=distribution(train_params.devices * train_params.num_nodes),
            deterministic=True,
            logger=MLFlowLogger(tracking_uri=settings.tracking_uri, run_id=run.info.run_id),
            callbacks=[checkpoint, *early_stopping(train_params.early_stopping_patience)],
            log_every_n_steps=5,
            enable_model_summary=False,
            default_root_dir=str(out_dir),
        )
        with warnings.catch_warnings():
            # Lightning's own pytree helper trips torch's LeafSpec deprecation on every batch: noise, not ours.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
            trainer.fit(model, datamodule=datamodule)
        if checkpoint.best_model_path:
            best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
            model.load_state_dict(best["state_dict"])
        best_val = best_score(checkpoint)
        bundle_dir = write_bundle(settings, model, classes, datamodule, out_dir)
        mlflow.log_artifacts(str(bundle_dir / "bundle"), artifact_path="bundle")
        log_servable_model(model, datamodule)
        mlflow.log_metric("best_val_acc", best_val)
        result = TrainResult(run.info.run_id, out_dir, bundle_dir, classes, best_val, data_version)
    (out_dir / "run.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def distribution(processes: int) -> str | DDPStrategy:
    """Lightning's strategy for ``train.devices`` × ``train.num_nodes`` processes: one process as before, or DDP.

    DDP starts its processes by *spawning* them for ``fit`` alone (gloo, the CPU backend): everything around
    ``fit`` — the MLflow run, the bundle, registration — stays in this process, so it happens once whatever
    the count, and ``train`` runs the same from the CLI, a DVC stage, a Prefect task or a test. Within ``fit``
    only rank 0 logs metrics and saves checkpoints; the metrics are synchronised across ranks (torchmetrics).
    """
    if processes == 1:
        return "auto"
    return DDPStrategy(process_group_backend="gloo", start_method="spawn")


def early_stopping(patience: int | None) -> list[EarlyStopping]:
    """Stop once val loss has not improved for ``patience`` epochs (``train.early_stopping_patience``; None: never).

    Small data sets get many epochs by default (``visionloop init``) so that they train enough; this ends
    them once more epochs stop helping, which the best-``val/acc`` checkpoint could not do by itself.
    """
    return [] if patience is None else [EarlyStopping(monitor="val/loss", mode="min", patience=patience)]


def best_score(checkpoint: ModelCheckpoint) -> float:
    """The best monitored value; after a spawned DDP ``fit`` only the best file's path comes back, so read it there."""
    if checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    if not checkpoint.best_model_path:
        return float("nan")
    saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    return float(saved["callbacks"][checkpoint.state_key]["best_model_score"])


def describe_training(
    settings: Settings, manifest, data_version: DataVersion, base: BaseWeights | None, strategy: str, lr: float,
    trigger: str,
) -> str:
    """The run's description in the MLflow UI: what was trained from what, on which data, and why."""
    splits = manifest["split"].value_counts()
    counts = " / ".join(f"{int(splits.get(split, 0))} {split}" for split in ("train", "val", "test"))
    start = "Trained from scratch" if base is None else f"Fine-tuned from {base.uri} (strategy {strategy})"
    return (f"{start} on data version {data_version.dvc_hash} ({data_version.path}, {len(manifest)} images: "
            f"{counts}); {settings.params.train.epochs} epochs at lr {lr:g}; trigger `{trigger}`. "
            "The run is named after its registry version once registered.")


def write_bundle(settings: Settings, model, classes: list[str], datamodule, out_dir: Path) -> Path:
    """Write the bundle files (contracts.BUNDLE_FILES) under ``out_dir``; the reference profile included."""

    root = out_dir
    (root / "bundle").mkdir(parents=True, exist_ok=True)
    network = model.net.eval()
    torch.save(network.state_dict(), root / BUNDLE_FILES["state_dict"])
    (root / BUNDLE_FILES["config"]).write_text(json.dumps(model.architecture, indent=2))
    (root / BUNDLE_FILES["eval_transform"]).write_text(pipeline_to_json(datamodule.eval_pipeline))
    (root / BUNDLE_FILES["classes"]).write_text(json.dumps(classes))
    servable = ServableModel(network, pipeline_to_json(datamodule.eval_pipeline), classes, model.architecture)
    # The reference is held-out data: embeddings of training images are over-confident.
    held_out = datamodule.manifest[datamodule.manifest["split"].isin(["val", "test"])]
    components = settings.params.monitoring.embedding_components
    profile, reduction = build_reference_profile(servable, load_images(held_out["abs_path"].tolist()), components)
    keep = expected_traffic(held_out, settings.params.monitoring.min_window)
    profile[keep].reset_index(drop=True).to_parquet(root / BUNDLE_FILES["reference_profile"], index=False)
    write_test_set(datamodule.manifest[datamodule.manifest["split"] == "test"], root / BUNDLE_FILES["test_set"])
    (root / BUNDLE_FILES["embedding_reduction"]).write_text(json.dumps(reduction))
    return root


def expected_traffic(held_out: pd.DataFrame, min_rows: int) -> np.ndarray:
    """Which held-out rows make the reference profile: the traffic the model is expected to serve (a mask).

    A model trained on the base data expects base-like traffic: every held-out row. A model healed on labeled
    production images (``origin`` "production", the shift that raised the alert) was made for that traffic: its
    reference is the held-out production images alone, so the traffic it was adapted to raises no new alert
    (against a mostly-base reference it would, and start retrains that cannot help) while a different shift,
    or a return to the old traffic, still does. Fewer than ``min_rows`` (``monitoring.min_window``) held-out
    production images are too few to judge a window against: the reference stays every held-out row.
    (The embedding reduction is fitted on every held-out row either way, for stable components.)
    """
    production = (held_out["origin"] == PRODUCTION_ORIGIN).to_numpy() if "origin" in held_out.columns else None
    if production is None or production.sum() < min_rows:
        return np.ones(len(held_out), dtype=bool)
    return production


def write_test_set(rows, directory: Path) -> None:
    """Copy the held-out test images with their labels (and metadata) into the bundle: the gate set."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i, source in enumerate(rows["abs_path"]):
        name = f"{i:05d}{Path(source).suffix}"
        shutil.copyfile(source, directory / name)
        names.append(name)
    frame = rows.drop(columns=["abs_path", "path", "split"], errors="ignore").assign(path=names)
    frame.to_csv(directory / "manifest.csv", index=False)


def log_servable_model(model, datamodule) -> None:
    """Log the pt2 pytorch-flavor model; a batch-2 input example keeps the batch dimension dynamic."""

    x, _ = next(iter(datamodule.val_dataloader()))
    example = np.zeros((2, *x.shape[1:]), dtype=np.float32)
    network = model.net.eval()
    mlflow.pytorch.log_model(network, name="model", input_example=example, pip_requirements=PIP_REQUIREMENTS)


def _log_data_report(prepared_dir: Path) -> None:

    for name in ("data_report.json", "data_report.png", "quarantine.csv"):
        if (prepared_dir / name).exists():
            mlflow.log_artifact(str(prepared_dir / name), artifact_path="data")
