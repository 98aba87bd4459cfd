"""Benchmark the ``batch_inference`` flow on Dask: 2 worker processes vs 1 on the same cores (goal ≥ 1.6×).

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/batch_dask.py                       # 8,000 generated digits, 2 rounds
    .venv/bin/python benchmarks/batch_dask.py --images-total 20000 --rounds 3 --bundle models

A throwaway project (the repository's params.yaml, its own MLflow store) registers the bundle as champion;
then, in alternating rounds, the flow runs with ``batch.runner: dask`` and ``batch.shards`` 1 and 2: a
``LocalCluster`` of that many single-threaded worker processes, each shard loading the model once and
writing its Parquet parts. ``batch.torch_threads`` is 2 / workers so that both runs use the two cores
(1 worker × 2 intra-op threads vs 2 workers × 1). Reported per run: the flow's wall time and images/s,
and the *shard phase* (the slowest shard's own seconds: what the parallelism speeds up, without the
cluster's start-up and the consolidation). Every output is checked: one row per image, no key twice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from batch import generate_images  # benchmarks/batch.py
from machine import describe, usable_cores  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]


def make_project(folder: Path, bundle: Path) -> None:
    """A project at ``folder`` whose champion (v1) is ``bundle``, in its own MLflow store under the folder."""
    import mlflow
    import yaml
    from mlflow import MlflowClient

    from visionloop.config import Settings
    from visionloop.models.tracking import point_mlflow_at

    folder.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    settings = Settings.load(folder)
    name = yaml.safe_load((ROOT / "params.yaml").read_text())["registry"]["model_name"]
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiment = client.create_experiment("benchmark", artifact_location=(folder / "artifacts").as_uri())
    point_mlflow_at(settings.tracking_uri)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(bundle / "bundle"), "bundle")
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id).version
    client.set_registered_model_alias(name, "champion", version)


def set_batch(project: Path, **values: object) -> None:
    """Change keys of ``batch:`` in the project's params.yaml (the flow reads it at start)."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["batch"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_once(project: Path, images: Path, workers: int, output: Path, cores: int) -> dict[str, float]:
    """One flow run on a LocalCluster of ``workers`` processes; its timings, its output checked."""
    import pandas as pd

    from flows.batch_inference import batch_inference

    set_batch(project, runner="dask", dask_address=None, shards=workers, torch_threads=max(1, cores // workers))
    start = time.perf_counter()
    result = batch_inference(str(images), str(output), project_dir=str(project))
    wall = time.perf_counter() - start
    paths = pd.read_parquet(output, columns=["path"])["path"]
    assert paths.is_unique and len(paths) == result["ok"] == result["total"], result
    shard_s = max(s["seconds"] for s in result["shards"])
    shutil.rmtree(output)
    return {"workers": workers, "images": result["ok"], "wall_s": wall, "img_s": result["ok"] / wall,
            "shard_phase_s": shard_s, "shard_img_s": result["ok"] / shard_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-total", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is compared")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models", help="a trained bundle folder")
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # 20 s is short on busy cores
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="batch-dask-") as tmp:
        work = Path(tmp)
        os.environ["PREFECT_HOME"] = str(work / "prefect")  # a private temporary Prefect server
        generate_images(work / "images", args.images_total)
        make_project(work / "project", args.bundle)
        runs = []
        for r in range(args.rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                runs.append(run_once(work / "project", work / "images", workers, work / f"out-{r}-{workers}", cores))
                print(json.dumps(runs[-1]), file=sys.stderr)
    best = {w: max((x for x in runs if x["workers"] == w), key=lambda x: x["img_s"]) for w in (1, 2)}
    print(f"batch_inference on Dask, {args.images_total} images, best of {args.rounds} — {describe(with_load=True)}")
    print("| workers | wall s | images/s | shard phase s | images/s in shards |")
    print("|---:|---:|---:|---:|---:|")
    for w in (1, 2):
        b = best[w]
        print(f"| {w} | {b['wall_s']:.1f} | {b['img_s']:.0f} | {b['shard_phase_s']:.1f} | {b['shard_img_s']:.0f} |")
    print(f"speed-up 2 vs 1 worker: {best[2]['img_s'] / best[1]['img_s']:.2f}× whole flow, "
          f"{best[2]['shard_img_s'] / best[1]['shard_img_s']:.2f}× shard phase (goal ≥ 1.6)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "machine": describe(with_load=True)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # flows/ and tasks/ are imported from the repository root
    raise SystemExit(main())
