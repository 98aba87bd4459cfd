"""Benchmark multi-process training: Lightning DDP on 2 CPU processes vs 1 — same test accuracy (goal ±0.01)?

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/ddp.py                          # params.yaml's epochs, the embedded digits
    .venv/bin/python benchmarks/ddp.py --epochs 2 --limit-train-fraction 0.3   # a quick look

Each run is a fresh project (the repository's params.yaml, git + DVC, its own MLflow store) going through the
pipeline's real steps — import, prepare, train, evaluate — with ``train.devices`` 1 and 2. DDP keeps the
global batch: each of the 2 processes gets ``train.batch_size / 2`` (``--same-per-process-batch`` gives each
the whole ``batch_size``, doubling the global batch and halving the steps). Reported per run: test accuracy
and macro-F1 (``metrics.json`` of ``evaluate``), best validation accuracy, and the training wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]


def make_project(folder: Path, overrides: dict[str, Any]) -> Path:
    """A fresh project at ``folder``: the repository's params (with ``overrides`` per section), DVC config, git."""
    import yaml

    folder.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, folder / name)
    (folder / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, folder / ".dvc" / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "src").symlink_to(ROOT / "src", target_is_directory=True)
    git = ["git", "-c", "user.email=b@example.com", "-c", "user.name=benchmark"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=folder, check=True)
    subprocess.run([*git, "add", "-A"], cwd=folder, check=True)
    subprocess.run([*git, "commit", "-qm", "project"], cwd=folder, check=True)
    return folder


def run_once(folder: Path, devices: int, train: dict[str, Any]) -> dict[str, Any]:
    """Import, prepare, train on ``devices`` processes, evaluate; the figures of the run."""
    from visionloop.config import Settings
    from visionloop.training import pipeline

    settings = Settings.load(make_project(folder, {"train": {**train, "devices": devices}}))
    pipeline.import_step(settings)
    pipeline.prepare_step(settings)
    start = time.perf_counter()
    result = pipeline.train_step(settings, trigger="benchmark")
    seconds = time.perf_counter() - start
    pipeline.evaluate_step(settings)
    metrics = json.loads(settings.path(pipeline.METRICS_FILE).read_text())
    return {"devices": devices, "batch_size": train["batch_size"], "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "best_val_acc": result.best_val_acc, "train_s": seconds}


def main(argv: list[str] | None = None) -> int:
    import yaml

    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=defaults["epochs"])
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="the global batch")
    parser.add_argument("--limit-train-fraction", type=float, default=defaults["limit_train_fraction"])
    parser.add_argument("--same-per-process-batch", action="store_true",
                        help="give each DDP process the whole batch (global batch × 2)")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    runs = []
    with tempfile.TemporaryDirectory(prefix="ddp-") as tmp:
        for devices in (1, 2):
            per_process = args.batch_size if args.same_per_process_batch else max(1, args.batch_size // devices)
            train = {"epochs": args.epochs, "batch_size": per_process,
                     "limit_train_fraction": args.limit_train_fraction}
            runs.append(run_once(Path(tmp) / f"devices-{devices}", devices, train))
            print(json.dumps(runs[-1]), file=sys.stderr)
    print(f"DDP on CPU, {args.epochs} epochs, train fraction {args.limit_train_fraction}, global batch "
          f"{args.batch_size}{' (x2 under DDP)' if args.same_per_process_batch else ''} — {describe(with_load=True)}")
    print("| processes | batch per process | test accuracy | macro-F1 | best val acc | train s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['devices']} | {r['batch_size']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
              f"{r['best_val_acc']:.4f} | {r['train_s']:.1f} |")
    difference = abs(runs[1]["accuracy"] - runs[0]["accuracy"])
    print(f"|accuracy(2) - accuracy(1)| = {difference:.4f} (goal ≤ 0.01: {'met' if difference <= 0.01 else 'missed'})")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "machine": describe(with_load=True)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
