"""Contours study: open vs closed outlines, trained on some conditions and scored on others (the seed's pitfall).

    python benchmarks/contours.py [--tiny] [--sizes 25 100 400] [--backbones small_cnn timm:resnet18]
                                  [--steps 300] [--pretrain-steps 1500] [--seeds 1] [--image-size 64]

The seed's first pitfall: "models must be trained to tell open from closed contours under various
conditions, or use an existing trained network". This script measures both routes on the generated
``contours`` set (``visionloop.data.contours``) under a **selection bias**:

* **Labeled training images** come from one corner of the conditions only: ``background=plain`` and
  ``stroke=thin`` (``TRAIN_CONDITIONS``). N = 25, 100, 400 of them (stratified, nested per seed).
* **Held-out conditions**: images of every other condition, never trained on. The headline column is
  the opposite corner, ``background=noise`` and ``stroke=thick`` (``HELD_OUT``); the per-slice columns
  (each background, each stroke, open-gap size) show where a model's accuracy falls.
  ``held-in`` is unseen images of the training conditions (what a biased test set would report).
* **Routes**, for each backbone (``small_cnn`` and any ``timm:<name>``): ``scratch`` (all weights from
  random initialisation) and the "existing trained network" route: the same backbone **pretrained here
  on a related generated task** — the ``shapes`` set (4 classes, every background), ``--pretrain-steps``
  steps — saved as a local weights file (``.pt`` state_dict + ``model_config.json``, loaded with
  ``weights_only=True`` by ``train.load_base``), then transferred with the library's strategies
  ``feature_extraction`` (frozen backbone, new head) and ``fine_tuning`` (last stages + head).
* **Budget**: the same number of optimisation steps for every run (``--steps``, batch 32), the
  training augmentation ``visionloop init`` would choose for the training images, the library's
  warm-up + cosine schedule, no validation set (labels are the scarce resource): the weights after the
  last step are scored. Time is the wall time of ``Trainer.fit``; the load average is printed, as
  shared cores skew it.

``--tiny`` runs every route with a few images and steps, to check the script end to end (its numbers
mean nothing). The full study is meant for a quiet machine: ~6,000 contours + 3,000 shapes generated,
3 sizes × 3 routes × backbones.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from contour_styles import write_styled_contours  # benchmarks/contour_styles.py: the other generator
from machine import describe  # benchmarks/machine.py (the script's folder is on sys.path)

from visionloop.config import Settings, apply_offline_environment

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONDITIONS = {"background": "plain", "stroke": "thin"}
HELD_OUT = {"background": "noise", "stroke": "thick"}
SLICES = {"background": ("plain", "gradient", "noise", "stripes"), "stroke": ("thin", "thick"),
          "gap": ("small", "large")}
BATCH_SIZE = 32
ROUTES = ("scratch", "shapes→feature_extraction", "shapes→fine_tuning")


def matches(table: pd.DataFrame, conditions: dict[str, str]) -> np.ndarray:
    return np.logical_and.reduce([table[c].to_numpy() == v for c, v in conditions.items()])


def generate(workdir: Path, n_contours: int, n_shapes: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both generated sets under ``workdir``, as manifests with an ``abs_path`` column."""
    from visionloop.data.contours import write_contours
    from visionloop.data.shapes import write_shapes

    tables = []
    for name, write, count in (("contours", write_contours, n_contours), ("shapes", write_shapes, n_shapes)):
        folder = workdir / name
        write(folder, count, seed)
        table = pd.read_csv(folder / "manifest.csv", dtype=str)
        tables.append(table.assign(abs_path=[str(folder / p) for p in table["path"]]))
    return tables[0], tables[1]


def stratified_order(labels: pd.Series, seed: int) -> np.ndarray:
    """Row positions, classes in turn (each class shuffled): any prefix is stratified, prefixes nest."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels.to_numpy() == c)) for c in sorted(labels.unique())]
    order = []
    for rank in range(max(len(rows) for rows in per_class)):
        order += [rows[rank] for rows in per_class if rank < len(rows)]
    return np.array(order)


def base_settings(train_rows: pd.DataFrame, workdir: Path, image_size: int, backbone: str) -> Settings:
    """The repository's params with what ``visionloop init`` would choose for the training images."""
    from visionloop.project.choices import choose
    from visionloop.project.survey import survey

    manifest = workdir / "train_pool.csv"
    train_rows[["abs_path", "label"]].rename(columns={"abs_path": "path"}).to_csv(manifest, index=False)
    settings = Settings.load(REPO)
    overrides, _ = choose(survey(manifest), settings.params.model_dump(mode="json"), "contours", str(manifest))
    resize = [{"Resize": {"height": image_size, "width": image_size}}]
    return settings.with_overrides({
        "data": {"channels": 3},
        "augment": {"train": resize + overrides["augment"]["train"][1:],
                    "eval": resize + overrides["augment"]["eval"][1:]},
        "model": {**overrides["model"], "backbone": backbone, "pretrained": None},
        "train": {"batch_size": BATCH_SIZE, "early_stopping_patience": None},
    })


def fit(settings: Settings, rows: pd.DataFrame, classes: list[str], base, strategy: str, steps: int, seed: int):
    """Train one configuration for about ``steps`` steps; returns the network and the seconds ``fit`` took."""
    import pytorch_lightning as pl

    from visionloop.training.datamodule import ImageDataModule
    from visionloop.training.train import build_classifier

    epochs = max(1, round(steps / math.ceil(len(rows) / BATCH_SIZE)))
    run_settings = settings.with_overrides({"train": {"epochs": epochs}})
    datamodule = ImageDataModule(rows.assign(split="train"), classes, settings.params.augment.train,
                                 settings.params.augment.eval, batch_size=BATCH_SIZE, num_workers=0, seed=seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = build_classifier(run_settings, classes, base, strategy)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", deterministic=True, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=1)
    started = time.perf_counter()
    trainer.fit(model, train_dataloaders=datamodule.train_dataloader())
    return model, time.perf_counter() - started


def pretrain(settings: Settings, shapes: pd.DataFrame, steps: int, seed: int, out: Path):
    """Train the backbone on the shapes set and save it as a local weights file; returns it loaded as a base."""
    import torch

    from visionloop.training.train import load_base

    classes = sorted(shapes["label"].unique())
    model, seconds = fit(settings, shapes, classes, None, "full", steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.net.state_dict(), out / "shapes.pt")
    (out / "model_config.json").write_text(json.dumps(model.architecture))
    print(f"pretrained {settings.params.model.backbone} on {len(shapes)} shapes in {seconds:.0f} s "
          f"→ {out / 'shapes.pt'}", flush=True)
    return load_base(str(out / "shapes.pt"), settings)


def score(model, settings: Settings, test: pd.DataFrame, classes: list[str], unseen: pd.DataFrame) -> dict[str, float]:
    """Accuracy on the held-in test images, the held-out corner, every slice of the off-condition images, and on
    ``unseen``: contours drawn by another generator (``contour_styles``: other primitives, paper backgrounds)."""
    from visionloop.models.bundle import ServableModel
    from visionloop.training.datamodule import load_images
    from visionloop.training.evaluate import evaluate_model
    from visionloop.training.preprocess import build_pipeline, pipeline_to_json

    servable = ServableModel(model.net.eval(), pipeline_to_json(build_pipeline(settings.params.augment.eval)),
                             classes, model.architecture)
    evaluation = evaluate_model(servable, load_images(test["abs_path"].tolist()), test["label"].tolist())
    correct = evaluation.y_pred == evaluation.y_true
    other = evaluate_model(servable, load_images(unseen["abs_path"].tolist()), unseen["label"].tolist())
    held_in = matches(test, TRAIN_CONDITIONS)
    row = {"held-in": correct[held_in].mean(), "held-out corner": correct[matches(test, HELD_OUT)].mean(),
           "off-condition": correct[~held_in].mean()}
    for column, values in SLICES.items():
        for value in values:
            row[f"{column}={value}"] = correct[~held_in & (test[column].to_numpy() == value)].mean()
    row["unseen styles"] = float(np.mean(other.y_pred == other.y_true))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few images and steps: checks the script runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--backbones", nargs="+", default=["small_cnn", "timm:resnet18"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--contours", type=int, default=6000)
    parser.add_argument("--shapes", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--unseen", type=int, default=600, help="contours drawn by benchmarks/contour_styles.py")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (1 if oversubscribed)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes, args.steps, args.pretrain_steps, args.contours, args.shapes = [4, 8], 4, 6, 160, 48
        args.unseen = 12
        args.image_size = 32
    apply_offline_environment()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|num_workers).*")
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {describe(with_load=True)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="contours-study-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        contours, shapes = generate(workdir, args.contours, args.shapes, seed=0)
        print(f"generated {len(contours)} contours + {len(shapes)} shapes in {time.perf_counter() - started:.0f} s",
              flush=True)
        pool = contours[matches(contours, TRAIN_CONDITIONS)].reset_index(drop=True)
        held_in_test = pool.iloc[len(pool) // 2:]  # never drawn for training: labels come from the first half
        pool = pool.iloc[: len(pool) // 2].reset_index(drop=True)
        test = pd.concat([held_in_test, contours[~matches(contours, TRAIN_CONDITIONS)]], ignore_index=True)
        if max(args.sizes) > len(pool):
            sys.exit(f"only {len(pool)} training-condition images for N={max(args.sizes)}: raise --contours")
        classes = sorted(contours["label"].unique())
        styled = write_styled_contours(workdir / "styled", args.unseen, seed=1)
        unseen = pd.read_csv(styled, dtype=str)
        unseen = unseen.assign(abs_path=[str(styled.parent / p) for p in unseen["path"]])
        for backbone in args.backbones:
            settings = base_settings(pool, workdir, args.image_size, backbone)
            base = pretrain(settings, shapes, args.pretrain_steps, 0, workdir / "weights" / backbone.replace(":", "_"))
            for seed in range(args.seeds):
                order = stratified_order(pool["label"], seed)
                for size in args.sizes:
                    train_rows = pool.iloc[order[:size]].reset_index(drop=True)
                    for route in ROUTES:
                        strategy = route.split("→")[-1] if "→" in route else "full"
                        model, seconds = fit(settings, train_rows, classes, None if route == "scratch" else base,
                                             strategy, args.steps, seed)
                        rows.append({"backbone": backbone, "route": route, "N": size, "seed": seed,
                                     "fit s": seconds, **score(model, settings, test, classes, unseen)})
                        print(f"{backbone} {route} N={size} seed {seed}: held-out corner "
                              f"{rows[-1]['held-out corner']:.3f}, unseen styles {rows[-1]['unseen styles']:.3f} "
                              f"({seconds:.0f} s)", flush=True)
    table = pd.DataFrame(rows).groupby(["backbone", "route", "N"], sort=False).mean(numeric_only=True)
    table = table.drop(columns="seed").reset_index()
    print(f"\n{len(test)} test images ({int(matches(test, HELD_OUT).sum())} in the held-out corner "
          f"{HELD_OUT}); training conditions {TRAIN_CONDITIONS}; {args.steps} steps at batch {BATCH_SIZE}, "
          f"{args.image_size} px; mean of {args.seeds} seed(s); load average at the end {describe(with_load=True)}\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
