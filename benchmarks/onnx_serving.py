"""ONNX Runtime vs PyTorch behind ``visionloop serve``: server CPU per request, and REST vs in-process throughput.

Run on demand (not part of the tests), one command, ratios printed at the end::

    .venv/bin/python benchmarks/onnx_serving.py                          # digits bundle in models/, timm:resnet18
    .venv/bin/python benchmarks/onnx_serving.py --duration 10 --rounds 2 --bundle models --timm resnet18 --size 64

Two questions, each answered by ``visionloop serve`` subprocesses that differ only in ``serving.runtime``
(a params.yaml copy per runtime, ``VISIONLOOP_PROJECT_DIR``), measured by the load generator of
``benchmarks/serving.py`` (raw HTTP/1.1 keep-alive clients, one PNG per request, server CPU from /proc
including the prediction-log writer's backlog):

1. **Digits** (``--bundle``, a trained bundle with a test set): server CPU per request, onnx vs torch, at
   each ``--clients`` count. Goal: onnx at least 20 % lower.
2. **timm** (``--timm NAME`` at ``--size`` px RGB, random weights: the cost does not depend on them):
   REST requests/s at the largest client count over the in-process batched throughput of the same
   runtime (``predict`` on ``serving.max_batch`` decoded images at a time, ``serving.torch_threads``
   threads: what the micro-batcher could reach with no HTTP at all). Goal: at least 0.8.

Both servers of a model load the same ONNX file, exported here first (as registration stores it with a
version), so no server start pays for an export. The cores are shared: the load average and the CPU of
other processes are printed with every cell; compare runtimes within one run, never across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from machine import describe  # benchmarks/machine.py (the script's folder is on sys.path)
from serving import (  # benchmarks/serving.py: the same load generator and server handling
    BIN,
    BOUNDARY,
    HOST,
    ROOT,
    Cell,
    Servers,
    Target,
    free_port,
    load_average,
    measure,
    multipart_body,
    server_environment,
)

RUNTIMES = ("torch", "onnx")
GOAL_CPU_SAVING = 0.20
GOAL_REST_OVER_INPROCESS = 0.80


def prepare_digits(bundle: Path, workdir: Path) -> tuple[Path, Path]:
    """A copy of the trained bundle (the original stays untouched) and one of its test images."""
    copy = Path(shutil.copytree(bundle, workdir / "digits"))
    samples = sorted((copy / "bundle" / "test_set").glob("*.png"))
    return copy, samples[0]


def prepare_timm(name: str, size: int, workdir: Path) -> tuple[Path, Path]:
    """A bundle of ``timm:NAME`` with random weights at ``size`` px RGB, with a small gate set, and a sample PNG."""
    import torch
    from PIL import Image

    from visionloop.contracts import BUNDLE_FILES
    from visionloop.models.network import build_network
    from visionloop.training.preprocess import build_pipeline, pipeline_to_json

    root = workdir / f"timm-{name}"
    (root / "bundle").mkdir(parents=True)
    classes = ["a", "b", "c", "d"]
    torch.manual_seed(0)
    config = {"backbone": f"timm:{name}", "num_classes": len(classes), "in_channels": 3, "dropout": 0.0}
    network = build_network(config)
    config["embedding_dim"] = int(network.embedding_dim)
    eval_spec = [{"Resize": {"height": size, "width": size}},
                 {"Normalize": {"mean": [0.5] * 3, "std": [0.5] * 3, "max_pixel_value": 255.0}}]
    torch.save(network.state_dict(), root / BUNDLE_FILES["state_dict"])
    (root / BUNDLE_FILES["config"]).write_text(json.dumps(config))
    (root / BUNDLE_FILES["eval_transform"]).write_text(pipeline_to_json(build_pipeline(eval_spec)))
    (root / BUNDLE_FILES["classes"]).write_text(json.dumps(classes))
    test_dir = root / BUNDLE_FILES["test_set"]
    test_dir.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(32):
        names.append(f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(test_dir / names[-1])
    (test_dir / "manifest.csv").write_text("path,label\n" + "".join(f"{n},{classes[i % 4]}\n" for i, n in
                                                                    enumerate(names)))
    return root, test_dir / names[0]


def ship_onnx(bundle: Path) -> dict[str, Any]:
    """Export the bundle's network into the bundle (``BUNDLE_FILES["onnx"]``), as registration does; its parity."""
    from visionloop.contracts import BUNDLE_FILES
    from visionloop.models.onnx_bundle import export_bundle_dir

    out = bundle / "onnx-export"
    started = time.perf_counter()
    result = export_bundle_dir(bundle, out)
    shutil.copyfile(result.onnx, bundle / BUNDLE_FILES["onnx"])
    parity = json.loads((out / "parity.json").read_text())
    return {"exporter": result.exporter, "seconds": time.perf_counter() - started, **parity["fp32"]}


def in_process_throughput(bundle: Path, runtime: str, sample: Path, duration: float) -> float:
    """Images/s of ``predict`` on ``serving.max_batch`` decoded images at a time, on ``serving.torch_threads``."""
    import torch

    from visionloop.config import Settings
    from visionloop.data.images import load_image
    from visionloop.models.onnx_bundle import load_bundle

    serving = Settings.load(ROOT).params.serving
    torch.set_num_threads(serving.torch_threads)
    model = load_bundle(bundle, runtime, cache_root=bundle / "onnx-cache", threads=serving.torch_threads)
    images = [load_image(sample)] * serving.max_batch
    for _ in range(3):
        model.predict(images)
    rates, deadline = [], time.monotonic() + duration
    while time.monotonic() < deadline or len(rates) < 3:
        started = time.perf_counter()
        model.predict(images)
        rates.append(len(images) / (time.perf_counter() - started))
    return statistics.median(rates)


def start(servers: Servers, workdir: Path, key: str, bundle: Path, runtime: str, sample: Path) -> Target:
    """``visionloop serve --model-uri BUNDLE`` in a project whose params.yaml says ``serving.runtime: RUNTIME``."""
    project = workdir / f"project-{key}"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["serving"]["runtime"] = runtime
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = server_environment(workdir)
    env["VISIONLOOP_PROJECT_DIR"] = str(project)
    env["VISIONLOOP_STATE_DIR"] = str(workdir / f"state-{key}")
    port = free_port()
    proc = servers.start(key, [str(BIN / "visionloop"), "serve", "--model-uri", str(bundle), "--host", HOST,
                               "--port", str(port)], env)
    seconds = servers.wait_ready(key, f"http://{HOST}:{port}/ready", timeout=600)
    print(f"  {key:<12} ready on {HOST}:{port} ({seconds:.1f} s after start)", flush=True)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    # named "visionloop": measure() then drains the prediction log and counts its CPU, as in serving.py
    target = Target("visionloop", f"http://{HOST}:{port}/predict", multipart_body(sample.read_bytes(), sample.name),
                    headers, proc.pid)
    return target


async def grid(targets: dict[str, Target], clients: list[int], args: argparse.Namespace) -> dict[str, list[Cell]]:
    cells: dict[str, list[Cell]] = {key: [] for key in targets}
    for round_ in range(1, args.rounds + 1):
        for n in clients:
            for key, target in targets.items():
                cell = await measure(target, n, args.warmup, args.duration, round_)
                cell.server = key
                cells[key].append(cell)
                print(f"  round {round_} {key:<12} {n:>3} clients: {cell.rps:7.1f} req/s  p50 {cell.p50_ms:6.1f} ms  "
                      f"server {cell.server_cpu_ms:6.2f} ms/req  batch {cell.mean_batch or 0:4.1f}  others "
                      f"{cell.others_cores:.2f} cores  load {cell.load1:.1f}  errors {cell.errors}", flush=True)
    return cells


def best(cells: list[Cell], clients: int) -> Cell:
    """The round with the most requests/s at ``clients`` (the least disturbed by other jobs)."""
    return max((c for c in cells if c.clients == clients), key=lambda c: c.rps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models", help="trained digits bundle with a test set")
    parser.add_argument("--timm", default="resnet18", help="timm model for the throughput question ('' to skip)")
    parser.add_argument("--size", type=int, default=64, help="input pixels of the timm model")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32], help="concurrent clients per cell")
    parser.add_argument("--duration", type=float, default=8.0, help="recorded seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds before each cell")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the grid; the best round per cell counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not sorted((args.bundle / "bundle" / "test_set").glob("*.png")):
        parser.error(f"{args.bundle} is not a trained bundle with a test set; train first (`visionloop train`)")
    print(f"machine: {describe(with_load=True)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="visionloop-onnx-bench-"))
    servers = Servers(workdir)
    figures: dict[str, Any] = {"machine": describe(), "load_before": load_average()}
    try:
        models = {"digits": prepare_digits(args.bundle.resolve(), workdir)}
        if args.timm:
            models[f"timm:{args.timm}@{args.size}"] = prepare_timm(args.timm, args.size, workdir)
        for label, (bundle, _) in models.items():
            figures[f"{label} export"] = ship_onnx(bundle)
            print(f"  exported {label}: {figures[f'{label} export']}", flush=True)
        targets = {f"{label}/{runtime}": start(servers, workdir, f"{label}/{runtime}".replace(":", "_")
                                               .replace("/", "-").replace("@", "-"), bundle, runtime, sample)
                   for label, (bundle, sample) in models.items() for runtime in RUNTIMES}
        digits = {k: t for k, t in targets.items() if k.startswith("digits/")}
        cells = asyncio.run(grid(digits, args.clients, args))
        top = max(args.clients)
        if args.timm:
            timm = {k: t for k, t in targets.items() if not k.startswith("digits/")}
            cells |= asyncio.run(grid(timm, [top], args))
            label = next(k for k in models if k != "digits")
            bundle, sample = models[label]
            for runtime in RUNTIMES:
                figures[f"{label}/{runtime} in-process img/s"] = in_process_throughput(bundle, runtime, sample,
                                                                                      args.duration)
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    figures["load_after"] = load_average()
    lines = ["", f"machine: {figures['machine']}; load average before {figures['load_before']}, after "
             f"{figures['load_after']}"]
    for n in args.clients:
        torch_cell, onnx_cell = best(cells["digits/torch"], n), best(cells["digits/onnx"], n)
        saving = 1 - onnx_cell.server_cpu_ms / torch_cell.server_cpu_ms
        figures[f"digits cpu saving @{n}"] = saving
        lines.append(f"digits, {n:>2} clients: server CPU/request torch {torch_cell.server_cpu_ms:.2f} ms, onnx "
                     f"{onnx_cell.server_cpu_ms:.2f} ms → onnx {100 * saving:.0f} % lower (goal ≥ "
                     f"{100 * GOAL_CPU_SAVING:.0f} %: {'met' if saving >= GOAL_CPU_SAVING else 'NOT met'}); req/s "
                     f"{torch_cell.rps:.0f} vs {onnx_cell.rps:.0f}")
    if args.timm:
        for runtime in RUNTIMES:
            cell = best(cells[f"{label}/{runtime}"], top)
            inproc = figures[f"{label}/{runtime} in-process img/s"]
            ratio = cell.rps / inproc
            figures[f"{label}/{runtime} rest/in-process @{top}"] = ratio
            lines.append(f"{label} {runtime}: REST {cell.rps:.1f} req/s at {top} clients (mean batch "
                         f"{cell.mean_batch or 0:.1f}) / in-process {inproc:.1f} img/s = {ratio:.2f} (goal ≥ "
                         f"{GOAL_REST_OVER_INPROCESS}: {'met' if ratio >= GOAL_REST_OVER_INPROCESS else 'NOT met'})")
    print("\n".join(lines))
    if args.json:
        cells_out = {key: [c.__dict__ for c in value] for key, value in cells.items()}
        args.json.write_text(json.dumps({"figures": figures, "cells": cells_out}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
