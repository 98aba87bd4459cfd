"""Drift-detection benchmark on the digits: false alarms and detection rates per shift and window size.

    python benchmarks/drift.py [--resamples 500] [--shift-resamples 100] [--seed 0] [--model DIR]

What it measures, with the same tests and Bonferroni thresholds as the monitor (``drift.run_drift_tests``,
which the tests check against Evidently's report):

* **The model.** By default the benchmark trains its own with ``visionloop.training.train`` and the project's
  parameters, on a stratified quarter of the train split (``train.limit_train_fraction``), in a temporary
  folder with its own MLflow store. The point is the images it does *not* train on: with the other three
  quarters besides val and test, ~1,480 digits are held out — enough for a reference profile and
  windows of 1,000 fresh images. ``--model DIR`` uses an existing bundle instead (``models/`` after
  ``dvc repro``); its held-out pool is then val + test only (~540), so n = 1,000 must be drawn with
  replacement: each image appears ~3.7 times, the window looks more like its few hundred sources than a
  fresh sample would, and the false-alarm rate at that size is inflated beyond what the tests guarantee
  on real traffic (~0.44 measured) — a limit of the data, not of the detector.
* **Reference and current never share an image.** Each trial splits the held-out pool at random into a
  reference part (its features are the reference profile: the model's outputs and its stored embedding
  reduction, as at registration) and a current part of 1,000 images, so the reference also varies from
  trial to trial, as it would from one trained model to the next.
* **No shift**: a window of ``n`` images drawn from the current part, without replacement.
* **Image shifts** (``visionloop.data.corruptions``): the same draw, each image corrupted — Gaussian noise,
  blur, brightness/contrast (washed out) and rotation at severities 1 (mild) and 2 (severe).
* **Label shifts** (a random class per trial): *class removed* — half (mild) or all (severe) of the
  class knocked out of the window; *class boosted* — the class makes up 30 % (mild) or 60 % (severe) of
  the window instead of ~10 %. A class's images are drawn without replacement while the current part has
  enough of them (~100 a class), with replacement beyond (the boosted class at n ≥ 200).

Reported: the false-alarm rate (no shift) and the detection rate of each shift at each size, with the
mean over all shifts beside Rabanser et al., "Failing Loudly" (NeurIPS 2019), whose best detector
(BBSD: the softmax outputs, univariate K-S, Bonferroni) detects on average 0.47 of their shifts at 100
samples and 0.70 at 1,000 (MNIST and CIFAR-10, a different and partly milder set of shifts). Two
detectors run on the same draws: the monitor's (image statistics + reduced embedding + outputs) and
BBSD alone (the ``prob_*`` columns) for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from machine import describe  # benchmarks/machine.py (the script's folder is on sys.path)

from visionloop.config import Settings, apply_offline_environment
from visionloop.contracts import DriftVerdict
from visionloop.data.corruptions import corrupt
from visionloop.models.bundle import ServableModel
from visionloop.monitoring.drift import DriftThresholds, run_drift_tests
from visionloop.monitoring.features import PROBABILITY_PREFIX, feature_columns, feature_frame, predict_in_chunks

SIZES = (20, 50, 100, 200, 1000)
IMAGE_SHIFTS = ("gaussian_noise", "blur", "brightness_contrast", "rotation")
LABEL_SHIFTS = ("class_removed", "class_boosted")
SEVERITIES = (1, 2)
TRAIN_FRACTION = 0.25
CURRENT_PART = 1000  # images of each trial's current part; the rest of the pool is the reference
MIN_REFERENCE = 400
KNOCK_OUT = {1: 0.5, 2: 1.0}  # share of the class removed from the window
BOOST = {1: 0.3, 2: 0.6}  # share of the window the boosted class takes
ALPHA = 0.05
THRESHOLDS = DriftThresholds(alpha=ALPHA, critical_share=1.0, critical_distance=1.0)  # severity: not scored
GOAL_N = 50
GOAL = {"false_alarm": 0.05, 1: 0.80, 2: 0.95}  # at most / at least, at GOAL_N
FAILING_LOUDLY = {100: 0.47, 1000: 0.70}


@dataclass
class Pool:
    """The held-out images' features: clean, and under each corruption (same rows, same order)."""

    labels: np.ndarray
    clean: pd.DataFrame
    shifted: dict[tuple[str, int], pd.DataFrame]
    columns: list[str]
    accuracy: float  # of the model on the clean held-out images
    source: str  # which model, which images


def train_benchmark_model(workdir: Path) -> tuple[ServableModel, pd.DataFrame, str]:
    """Train on a quarter of the train split under ``workdir``; the model and the manifest rows it never saw."""
    from visionloop.contracts import DataVersion
    from visionloop.data.manifest import read_manifest
    from visionloop.training import pipeline
    from visionloop.training.datamodule import stratified_subset
    from visionloop.training.train import train

    # The benchmark's training runs go to its own MLflow store in workdir, not the project's.
    os.environ["VISIONLOOP_STATE_DIR"] = str(workdir / "state")
    raw, prepared = workdir / "raw", workdir / "prepared"
    settings = Settings.load(overrides={
        "data": {"source": str(raw), "raw_dir": str(raw), "prepared_dir": str(prepared)},
        "train": {"limit_train_fraction": TRAIN_FRACTION},
    })
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress bar: keep stdout for the tables
        pipeline.import_step(settings)
        pipeline.prepare_step(settings)
        train(settings, out_dir=workdir / "models", trigger="benchmark",
              data_version=DataVersion("benchmark", str(raw), "none"))
    manifest = read_manifest(prepared)
    trained = stratified_subset(manifest[manifest["split"] == "train"], TRAIN_FRACTION, settings.seed)
    held_out = manifest.drop(index=trained.index).reset_index(drop=True)
    model = ServableModel.from_dir(workdir / "models", name="benchmark", version="quarter")
    epochs = settings.params.train.epochs
    return model, held_out, (f"a model trained for {epochs} epochs on {len(trained)} images "
                             f"({TRAIN_FRACTION:.0%} of the train split)")


def existing_model(settings: Settings, model_dir: Path) -> tuple[ServableModel, pd.DataFrame, str]:
    """A trained bundle and its val + test images (the prepared data it was trained with)."""
    from visionloop.data.manifest import read_manifest

    manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
    held_out = manifest[manifest["split"].isin(["val", "test"])].reset_index(drop=True)
    bundle_test = model_dir / "bundle" / "test_set" / "manifest.csv"
    if bundle_test.exists():  # the prepared data must be the split this model was trained with
        trained_test = set(pd.read_csv(bundle_test, dtype=str)["sha256"])
        if not trained_test <= set(held_out["sha256"]):
            raise SystemExit("data/prepared is not the split the model was trained on: run `dvc repro` first")
    return ServableModel.from_dir(model_dir, name="bundle", version="local"), held_out, f"the bundle {model_dir}"


def held_out_pool(model: ServableModel, held_out: pd.DataFrame, source: str) -> Pool:
    """Features of the held-out images and of their corrupted versions."""
    from visionloop.training.datamodule import load_images

    images = load_images(held_out["abs_path"].tolist())

    def features(batch: list[np.ndarray]) -> pd.DataFrame:
        return feature_frame(batch, predict_in_chunks(model, batch), model.classes, model.reduction)

    clean = features(images)
    shifted = {
        (name, severity): features(corrupt(images, name, severity, seed=severity))
        for name in IMAGE_SHIFTS
        for severity in SEVERITIES
    }
    labels = held_out["label"].to_numpy(str)
    accuracy = float(np.mean(clean["pred_label"].to_numpy(str) == labels))
    return Pool(labels, clean, shifted, feature_columns(model.classes, model.reduction), accuracy, source)


def draw(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``rows``: without replacement while there are enough, with replacement beyond."""
    return rng.choice(rows, size=n, replace=n > len(rows))


def label_shift_draw(
    rng: np.random.Generator, rows: np.ndarray, labels: np.ndarray, n: int, kind: str, severity: int
) -> np.ndarray:
    """A window whose class proportions are shifted for one random class."""
    classes = np.unique(labels[rows])
    target = rng.choice(classes)
    share = np.array([np.mean(labels[rows] == c) for c in classes])
    k = int(np.flatnonzero(classes == target)[0])
    if kind == "class_removed":
        share[k] *= 1 - KNOCK_OUT[severity]
        share /= share.sum()
    else:
        others = np.delete(np.arange(len(classes)), k)
        share[others] *= (1 - BOOST[severity]) / share[others].sum()
        share[k] = BOOST[severity]
    counts = rng.multinomial(n, share)
    return np.concatenate([draw(rng, rows[labels[rows] == c], m) for c, m in zip(classes, counts, strict=True) if m])


def bbsd_drift(verdict: DriftVerdict) -> bool:
    """BBSD's verdict from the same per-feature tests: any ``prob_*`` K-S test below alpha / (number of them)."""
    outputs = [f for f in verdict.features if f.feature.startswith(PROBABILITY_PREFIX)]
    return any(f.p_value is not None and f.p_value <= ALPHA / len(outputs) for f in outputs)


DETECTORS = {"monitor": lambda verdict: verdict.drift, "bbsd": bbsd_drift}


def run(pool: Pool, resamples: int, shift_resamples: int, seed: int) -> pd.DataFrame:
    """One row per (detector, shift, severity, n): the share of windows whose verdict is drift."""
    rng = np.random.default_rng(seed)
    conditions = [("none", 0)] + [(s, v) for s in (*IMAGE_SHIFTS, *LABEL_SHIFTS) for v in SEVERITIES]
    n_pool = len(pool.labels)
    n_current = current_part_size(n_pool)
    rows = []
    for n in SIZES:
        started = time.perf_counter()
        for shift, severity in conditions:
            trials = resamples if shift == "none" else shift_resamples
            hits = dict.fromkeys(DETECTORS, 0)
            for _ in range(trials):
                order = rng.permutation(n_pool)
                current_rows, reference_rows = order[:n_current], order[n_current:]
                reference = pool.clean.iloc[reference_rows]
                if shift in LABEL_SHIFTS:
                    current = pool.clean.iloc[label_shift_draw(rng, current_rows, pool.labels, n, shift, severity)]
                else:
                    source = pool.clean if shift == "none" else pool.shifted[(shift, severity)]
                    current = source.iloc[draw(rng, current_rows, n)]
                verdict = run_drift_tests(reference, current, THRESHOLDS, columns=pool.columns)
                for name, detected in DETECTORS.items():
                    hits[name] += detected(verdict)
            rows += [{"detector": name, "shift": shift, "severity": severity, "n": n, "trials": trials,
                      "rate": hits[name] / trials} for name in DETECTORS]
        print(f"  n={n}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return pd.DataFrame(rows)


def current_part_size(n_pool: int) -> int:
    """1,000 images when the pool leaves at least ``MIN_REFERENCE`` for the reference, else half the pool."""
    return max(n_pool // 2, min(CURRENT_PART, n_pool - MIN_REFERENCE))


def wilson_upper(rate: float, trials: int, z: float = 1.96) -> float:
    k = rate * trials
    centre = (k + z * z / 2) / (trials + z * z)
    half = z * np.sqrt(k * (trials - k) / trials + z * z / 4) / (trials + z * z)
    return float(centre + half)


def markdown(results: pd.DataFrame, detector: str) -> str:
    """The table of one detector: false alarms, then detection per shift, then the mean over shifts."""
    part = results[results["detector"] == detector]
    table = part.pivot_table(index=["shift", "severity"], columns="n", values="rate", sort=False)
    header = "| shift | severity | " + " | ".join(f"n = {n}" for n in SIZES) + " |"
    lines = [header, "|" + "---|" * (len(SIZES) + 2)]
    none = table.loc[("none", 0)]
    trials = int(part[part["shift"] == "none"]["trials"].iloc[0])
    lines.append("| **no shift: false alarms** | – | " + " | ".join(f"**{none[n]:.3f}**" for n in SIZES) + " |")
    for (shift, severity), values in table.iterrows():
        if shift == "none":
            continue
        label = {1: "mild", 2: "severe"}[severity]
        lines.append(f"| {shift} | {label} | " + " | ".join(f"{values[n]:.2f}" for n in SIZES) + " |")
    shifted = table.drop(index=("none", 0))
    lines.append("| **mean detection, all shifts** | | " + " | ".join(f"**{shifted[n].mean():.2f}**" for n in SIZES)
                 + " |")
    reference = " | ".join(str(FAILING_LOUDLY.get(n, "")) for n in SIZES)
    lines.append(f"| Failing Loudly, best (BBSD + K-S + Bonferroni), mean | | {reference} |")
    lines.append(f"\nFalse alarms over {trials} no-shift windows per size (95 % upper bounds: "
                 + ", ".join(f"n={n}: {wilson_upper(none[n], trials):.3f}" for n in SIZES) + ").")
    return "\n".join(lines)


def goal_check(results: pd.DataFrame) -> list[str]:
    """The issue's goal for the monitor's detector, met or not."""
    part = results[results["detector"] == "monitor"]
    notes = []
    false_alarms = part[part["shift"] == "none"].set_index("n")["rate"]
    worst = false_alarms.idxmax()
    notes.append(f"false alarms ≤ {GOAL['false_alarm']:.0%} at every size: "
                 f"{'met' if (false_alarms <= GOAL['false_alarm']).all() else 'NOT met'} "
                 f"(highest {false_alarms[worst]:.3f} at n={worst})")
    at_goal = part[(part["n"] == GOAL_N) & (part["shift"] != "none")]
    for severity, label in ((2, "severe"), (1, "mild")):
        rows = at_goal[at_goal["severity"] == severity]
        missed = rows[rows["rate"] < GOAL[severity]]
        verdict = "met" if missed.empty else "NOT met for " + ", ".join(
            f"{r.shift} ({r.rate:.2f})" for r in missed.itertuples())
        notes.append(f"at n={GOAL_N}, each {label} shift detected ≥ {GOAL[severity]:.0%}: {verdict} "
                     f"(mean {rows['rate'].mean():.2f})")
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resamples", type=int, default=500, help="no-shift windows per size")
    parser.add_argument("--shift-resamples", type=int, default=100, help="windows per shift and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None,
                        help="an existing bundle folder (e.g. models); default: train a benchmark model")
    args = parser.parse_args(argv)
    apply_offline_environment()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="visionloop-drift-benchmark-") as workdir:
        if args.model is None:
            model, held_out, source = train_benchmark_model(Path(workdir))
        else:
            model, held_out, source = existing_model(Settings.load(), args.model)
        print(f"model ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        pool = held_out_pool(model, held_out, source)
    prepared = time.perf_counter() - started
    print(f"pool: {len(pool.labels)} held-out images, {len(pool.columns)} features, accuracy {pool.accuracy:.3f}; "
          f"ready in {prepared:.0f} s", file=sys.stderr)
    results = run(pool, args.resamples, args.shift_resamples, args.seed)
    elapsed = time.perf_counter() - started
    n_current = current_part_size(len(pool.labels))
    print(f"## Drift detection on the digits (alpha = {ALPHA}, Bonferroni)\n")
    print("### The monitor's detector: image statistics + reduced embedding + model outputs\n")
    print(markdown(results, "monitor"))
    print("\n### BBSD alone (softmax outputs, K-S, Bonferroni) on the same windows\n")
    print(markdown(results, "bbsd"))
    print("\n### Goal (issue 5)\n")
    for note in goal_check(results):
        print(f"- {note}")
    resampled = [n for n in SIZES if n > n_current]
    print(f"\nModel: {source}; accuracy {pool.accuracy:.3f} on its {len(pool.labels)} held-out images. Each trial: "
          f"reference = {len(pool.labels) - n_current} of them, current part = the other {n_current}, at random; "
          f"windows drawn from the current part "
          + (f"with replacement at n = {', '.join(map(str, resampled))} (false alarms there are inflated)"
             if resampled else "without replacement") + ". "
          f"{args.resamples} no-shift and {args.shift_resamples} shifted windows per size, seed {args.seed}. "
          f"{elapsed:.0f} s in all ({prepared:.0f} s of it training and features) on {describe()}.")


if __name__ == "__main__":
    main()
