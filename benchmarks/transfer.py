"""Transfer-learning benchmark: adapting the clean-digits champion to a new camera with few labels.

    python benchmarks/transfer.py [--seeds 3] [--sizes 25 100 400] [--steps 200] [--no-mix] [--model models]

The champion (a bundle folder, ``models/`` after ``dvc repro``) was trained on clean digits. The
drift is the demo's: ``corruptions.new_camera`` at severity 2 (blur, washed-out contrast, noise).

* **Labeled drifted examples**: N = 25, 100, 400 images of the TRAIN split, drawn stratified by
  class (classes in turn, so each class gets N/10 ± 1) and corrupted. For one seed the draws are
  nested (the 25 are among the 100, the 100 among the 400); each seed draws anew.
* **Held-out drifted data**: the TEST split, corrupted (never trained on). **Forgetting**: accuracy
  on the clean TEST split. Both through ``evaluate.evaluate_model`` with the champion's eval pipeline.
* **Strategies** are the library's own (``train.build_classifier`` → ``ImageClassifier.apply_strategy``,
  the learning rates of ``params.yaml``: ``train.lr``, times ``train.fine_tune_lr_factor`` for
  fine_tuning): ``feature_extraction`` (frozen backbone and its BatchNorm statistics, head trained),
  ``fine_tuning`` (the last ``train.fine_tune_blocks`` conv blocks + embedding + head), ``full`` (all
  weights, starting from the champion) and, as a reference, ``scratch`` (the same network freshly
  initialised, all weights). ``feature_extraction+bn`` is feature_extraction with the backbone's
  BatchNorm layers left in train mode, so their statistics are re-estimated on the new images (the
  library keeps them frozen in ``ImageClassifier.on_train_epoch_start``; this variant skips that hook).
  ``mixed`` is fine_tuning on the clean train split plus the N drifted images together;
  ``mixed+weighted`` is what the retrain flow does: the same, with the drifted images drawn
  ``retrain.origin_weights.production`` times as often (``ImageDataModule.origin_weights``).
* **Budget**: the same number of optimisation steps for every strategy (``--steps``, default 200,
  batch 32): epochs = round(steps / batches per epoch), so N=25 → 200 epochs of 1 step, N=400 → 15 of
  13, mixed → 4-5 epochs over ~1,300-1,700 images (the retrain flow's ``retrain.epochs`` is 6). The
  training augmentation of ``params.yaml`` applies, the cosine schedule spans the epochs, no
  validation set and no checkpoint selection (a validation set would cost labels too): the weights
  after the last step are scored.
* **Time** (median and range over seeds) is the wall time of building the classifier and ``Trainer.fit`` with
  ``torch.set_num_threads(2)``; the machine's load average is printed because shared cores skew it.

Lightning is driven directly (no MLflow run per configuration): ``train.train`` adds MLflow logging,
the bundle and its reference profile, none of which changes what is learned.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from machine import describe  # benchmarks/machine.py (the script's folder is on sys.path)

from visionloop.config import Settings, apply_offline_environment

SIZES = (25, 100, 400)
FE_ADAPTIVE_BN = "feature_extraction+bn"  # frozen weights, BatchNorm statistics re-estimated on the new data
STRATEGIES = ("feature_extraction", FE_ADAPTIVE_BN, "fine_tuning", "full", "scratch")
MIXED = "mixed"  # fine_tuning on clean train + the N drifted images, drawn as often as the clean ones
MIXED_WEIGHTED = "mixed+weighted"  # the same, drifted images drawn retrain.origin_weights.production times as often
MIXES = (MIXED, MIXED_WEIGHTED)
LIBRARY_STRATEGY = {FE_ADAPTIVE_BN: "feature_extraction", "scratch": "full", MIXED: "fine_tuning",
                    MIXED_WEIGHTED: "fine_tuning"}
CORRUPTION, SEVERITY = "new_camera", 2
BATCH_SIZE = 32
TRAIN_CORRUPTION_SEED, TEST_CORRUPTION_SEED = 1, 2
THREADS = 2


@dataclass
class Pools:
    """Manifests (path,label,split,abs_path) of the images a run may train on or is scored on."""

    clean_train: pd.DataFrame
    drifted_train: pd.DataFrame  # same rows and order as clean_train, images corrupted
    clean_test_images: list[np.ndarray]
    drifted_test_images: list[np.ndarray]
    test_labels: list[str]


@dataclass
class RunResult:
    strategy: str
    n: int
    seed: int
    drifted_acc: float
    clean_acc: float
    seconds: float
    steps: int
    epochs: int


def write_corrupted(rows: pd.DataFrame, directory: Path, seed: int) -> pd.DataFrame:
    """Corrupt the rows' images once (reproducibly) into ``directory``; the manifest rows point there."""
    from PIL import Image

    from visionloop.data.corruptions import corrupt
    from visionloop.training.datamodule import load_images

    directory.mkdir(parents=True, exist_ok=True)
    images = corrupt(load_images(rows["abs_path"].tolist()), CORRUPTION, SEVERITY, seed=seed)
    paths = []
    for i, image in enumerate(images):
        path = directory / f"{i:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return rows.assign(abs_path=paths)


def build_pools(settings: Settings, model_dir: Path, workdir: Path) -> Pools:
    from visionloop.data.corruptions import corrupt
    from visionloop.data.manifest import read_manifest
    from visionloop.training.datamodule import load_images

    manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
    bundle_test = model_dir / "bundle" / "test_set" / "manifest.csv"
    if bundle_test.exists():  # the held-out test images must be the ones the champion never trained on
        trained_test = set(pd.read_csv(bundle_test, dtype=str)["sha256"])
        if trained_test != set(manifest.loc[manifest["split"] == "test", "sha256"]):
            raise SystemExit("data/prepared is not the split the model was trained on: run `dvc repro` first")
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    clean_test = load_images(test["abs_path"].tolist())
    return Pools(
        clean_train=train,
        drifted_train=write_corrupted(train, workdir / "drifted_train", TRAIN_CORRUPTION_SEED),
        clean_test_images=clean_test,
        drifted_test_images=corrupt(clean_test, CORRUPTION, SEVERITY, seed=TEST_CORRUPTION_SEED),
        test_labels=test["label"].tolist(),
    )


def stratified_order(labels: pd.Series, seed: int) -> np.ndarray:
    """Row positions, classes in turn (each class shuffled): any prefix of N is stratified, prefixes nest."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels.to_numpy() == c)) for c in sorted(labels.unique())]
    order = []
    for rank in range(max(len(rows) for rows in per_class)):
        layer = [rows[rank] for rows in per_class if rank < len(rows)]
        order += [layer[i] for i in rng.permutation(len(layer))]
    return np.array(order)


def epochs_for(n_images: int, steps: int) -> tuple[int, int]:
    """Epochs giving about ``steps`` optimisation steps at batch 32, and the steps they give."""
    per_epoch = math.ceil(n_images / BATCH_SIZE)
    epochs = max(1, round(steps / per_epoch))
    return epochs, epochs * per_epoch


def train_once(settings: Settings, base, classes: list[str], rows: pd.DataFrame, strategy: str, seed: int,
               steps: int, origin_weights: dict[str, float] | None = None):
    """Train one configuration; return the network and the wall seconds it took."""
    import pytorch_lightning as pl
    import torch

    from visionloop.training.datamodule import ImageDataModule
    from visionloop.training.train import build_classifier

    epochs, _ = epochs_for(len(rows), steps)
    run_settings = settings.with_overrides({"train": {"epochs": epochs, "batch_size": BATCH_SIZE}})
    datamodule = ImageDataModule(
        rows.assign(split="train"), classes, settings.params.augment.train, settings.params.augment.eval,
        batch_size=BATCH_SIZE, num_workers=0, seed=seed, origin_weights=origin_weights,
    )
    pl.seed_everything(seed, workers=True, verbose=False)
    started = time.perf_counter()
    model = build_classifier(run_settings, classes, None if strategy == "scratch" else base,
                             LIBRARY_STRATEGY.get(strategy, strategy))
    if strategy == FE_ADAPTIVE_BN:  # skip the hook that keeps the frozen backbone's BatchNorm in eval mode
        model.on_train_epoch_start = lambda: None
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(model, train_dataloaders=datamodule.train_dataloader())
    seconds = time.perf_counter() - started
    if strategy == "feature_extraction":  # the library promises a frozen backbone keeps its BN statistics
        frozen = {k: v for k, v in base.state_dict.items() if not k.startswith("head.")}
        changed = [k for k, v in model.net.state_dict().items() if k in frozen and not torch.equal(v, frozen[k])]
        if changed:
            raise RuntimeError(f"feature_extraction changed frozen weights or statistics: {changed[:3]}")
    return model, seconds, epochs


def score(model_net, champion, pools: Pools) -> tuple[float, float]:
    """Accuracy on the drifted and on the clean test split, through the champion's eval pipeline."""
    from visionloop.models.bundle import ServableModel
    from visionloop.training.evaluate import evaluate_model

    servable = ServableModel(model_net, champion.eval_transform_json, champion.classes, champion.config)
    drifted = evaluate_model(servable, pools.drifted_test_images, pools.test_labels).metrics()["accuracy"]
    clean = evaluate_model(servable, pools.clean_test_images, pools.test_labels).metrics()["accuracy"]
    return drifted, clean


def run(settings: Settings, model_dir: Path, sizes: list[int], seeds: int, steps: int, mix: bool,
        workdir: Path, only: list[str] | None, production_weight: float) -> tuple[list[RunResult], tuple[float, float]]:
    import torch

    from visionloop.models.bundle import ServableModel
    from visionloop.training.train import load_base

    torch.set_num_threads(THREADS)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # after its import set its own levels
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    champion = ServableModel.from_dir(model_dir)
    base = load_base(str(model_dir), settings)
    classes = list(base.classes)
    pools = build_pools(settings, model_dir, workdir)
    baseline = score(champion.network, champion, pools)
    print(f"champion: drifted test {baseline[0]:.3f}, clean test {baseline[1]:.3f}", file=sys.stderr)
    strategies = [s for s in (*STRATEGIES, *(MIXES if mix else ())) if not only or s in only]
    weights = {"production": production_weight}
    results = []
    for seed in range(seeds):
        order = stratified_order(pools.drifted_train["label"], seed)
        for n in sizes:
            drifted = pools.drifted_train.iloc[order[:n]]
            for strategy in strategies:
                rows = drifted
                if strategy in MIXES:
                    rows = pd.concat([pools.clean_train.assign(origin="base"), drifted.assign(origin="production")])
                model, seconds, epochs = train_once(settings, base, classes, rows, strategy, seed, steps,
                                                    weights if strategy == MIXED_WEIGHTED else None)
                drifted_acc, clean_acc = score(model.net, champion, pools)
                _, n_steps = epochs_for(len(rows), steps)
                results.append(RunResult(strategy, n, seed, drifted_acc, clean_acc, seconds, n_steps, epochs))
                print(f"  seed {seed} n={n:<4} {strategy:<18} drifted {drifted_acc:.3f} clean {clean_acc:.3f} "
                      f"{seconds:5.1f} s ({epochs} epochs, {n_steps} steps)", file=sys.stderr)
    return results, baseline


def summarise(results: list[RunResult]) -> pd.DataFrame:
    frame = pd.DataFrame([r.__dict__ for r in results])
    return frame.groupby(["n", "strategy"], sort=False).agg(
        drifted=("drifted_acc", "mean"), drifted_sd=("drifted_acc", "std"),
        clean=("clean_acc", "mean"), clean_sd=("clean_acc", "std"),
        seconds=("seconds", "median"), seconds_min=("seconds", "min"), seconds_max=("seconds", "max"),
        steps=("steps", "first"), epochs=("epochs", "first"), seeds=("seed", "nunique"),
    ).reset_index()


def markdown(summary: pd.DataFrame, baseline: tuple[float, float]) -> str:
    def cell(mean: float, sd: float, fmt: str) -> str:
        return f"{mean:{fmt}}" if np.isnan(sd) else f"{mean:{fmt}} ± {sd:{fmt}}"

    lines = ["| labeled drifted | strategy | drifted test acc | clean test acc | train s, median (min–max) "
             "| steps (epochs) |",
             "|---:|---|---:|---:|---:|---:|",
             f"| 0 | champion, no adaptation | {baseline[0]:.3f} | {baseline[1]:.3f} | – | – |"]
    for r in summary.itertuples():
        name = {MIXED: "mixed: fine_tuning on clean train + N drifted",
                MIXED_WEIGHTED: "mixed, the N drifted drawn more often (retrain.origin_weights)"}.get(r.strategy,
                                                                                                   r.strategy)
        lines.append(f"| {r.n} | {name} | {cell(r.drifted, r.drifted_sd, '.3f')} | {cell(r.clean, r.clean_sd, '.3f')} "
                     f"| {r.seconds:.1f} ({r.seconds_min:.1f}–{r.seconds_max:.1f}) | {r.steps} ({r.epochs}) |")
    return "\n".join(lines)


def recommendation(summary: pd.DataFrame, baseline: tuple[float, float]) -> str:
    """Which strategy wins at which label budget, derived from the numbers (ties within one sd noted)."""
    sentences = []
    for n, part in summary.groupby("n", sort=False):
        ranked = part.sort_values("drifted", ascending=False)
        best = ranked.iloc[0]
        sd = best.drifted_sd if not np.isnan(best.drifted_sd) else 0.0
        close = [r.strategy for r in ranked.iloc[1:].itertuples() if best.drifted - r.drifted <= sd]
        tie = f" (within one sd of it: {', '.join(close)})" if close else ""
        sentences.append(f"With {n} labels, {best.strategy} is best on drifted data at {best.drifted:.3f}{tie}, "
                         f"clean accuracy {best.clean:.3f}")
    transfer = summary[summary["strategy"] != "scratch"].groupby("n")["drifted"].max()
    scratch = summary[summary["strategy"] == "scratch"].set_index("n")["drifted"]
    gains = ", ".join(f"{transfer[n] - scratch[n]:+.3f} at {n}" for n in scratch.index if n in transfer.index)
    seconds = summary.groupby("strategy", sort=False)["seconds"].median()
    times = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    versus_scratch = f" Best transfer minus scratch: {gains}." if gains else ""
    return (f"The champion alone gets {baseline[0]:.3f} on the drifted test split ({baseline[1]:.3f} clean). "
            + ". ".join(sentences) + f".{versus_scratch} Median training time per run: {times}.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="repetitions (label draw, init, augmentation, order)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="labeled drifted examples")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per run (batch 32), about")
    parser.add_argument("--no-mix", action="store_true", help="skip fine_tuning on clean train + N drifted")
    parser.add_argument("--model", type=Path, default=Path("models"), help="the champion's bundle folder")
    parser.add_argument("--only", nargs="+", choices=[*STRATEGIES, *MIXES], help="run only these strategies")
    parser.add_argument("--production-weight", type=float, default=None,
                        help="how much more often mixed+weighted draws the drifted images "
                        "(default: retrain.origin_weights.production of params.yaml)")
    args = parser.parse_args(argv)
    apply_offline_environment()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    settings = Settings.load()
    model_dir = settings.path(args.model)
    machine_before = describe(with_load=True)
    started = time.perf_counter()
    with (tempfile.TemporaryDirectory(prefix="visionloop-transfer-benchmark-") as workdir,
          contextlib.redirect_stdout(sys.stderr)):  # keep stdout for the table
        weight = args.production_weight or settings.params.retrain.origin_weights["production"]
        results, baseline = run(settings, model_dir, args.sizes, args.seeds, args.steps, not args.no_mix,
                                Path(workdir), args.only, weight)
    elapsed = time.perf_counter() - started
    summary = summarise(results)
    print(f"## Transfer learning: clean-digits champion → {CORRUPTION} severity {SEVERITY}\n")
    print(markdown(summary, baseline))
    print(f"\nAccuracy: mean ± sd over {args.seeds} seed(s); time: median and range (shared cores). "
          f"Drifted test: the TEST split corrupted; clean test: the same "
          f"images uncorrupted. ~{args.steps} steps of batch {BATCH_SIZE} "
          f"per run, no validation-based checkpoint selection; mixed trains on the clean train split plus the N "
          f"drifted images (mixed+weighted: drawn {weight:g}× as often).\n")
    print(recommendation(summary, baseline))
    print(f"\n{elapsed:.0f} s in all. Machine at start: {machine_before}; at end: {describe(with_load=True)}.")


if __name__ == "__main__":
    main()
