"""ONNX Runtime vs PyTorch behind ``visionloop serve``: server CPU per request, and REST vs in-process throughput.

Run on demand (not part of the tests), one command, ratios printed at the end::

    .venv/bin/python benchmarks/onnx_serving.py                          # digits bundle in models/, timm:resnet18
    .venv/bin/python benchmarks/onnx_serving.py --duration 10 --rounds 2 --bundle models --timm resnet18 --size 64

Two questions, each answered by ``visionloop serve`` subprocesses that differ only in ``serving.runtime``
(a params.yaml copy per runtime, ``VISIONLOOP_PROJECT_DIR``), measured by the load generator of
``benchmarks/serving.py`` (raw HTTP/1.1 keep-alive clients, one PNG per request, server CPU from /proc
including the prediction-log writer's backlog):

1. **Digits** (``--bundle``, a trained bundle with a test set): server CPU per request, onnx vs torch, at
   each ``--clients`` count. Goal: onnx at least 20 % lower — the median over rounds of each round's paired
   saving (the two runtimes run back to back, A B then B A), with the CPU split into event loop, micro-batcher
   and log writer.
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
from machine import describe, usable_cores  # benchmarks/machine.py (the script's folder is on sys.path)
from serving import (  # benchmarks/serving.py: the same load generator and server handling
    BIN,
    BOUNDARY,
    CLK_TCK,
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
    tree_cpu_seconds,
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


def in_process_throughput(bundle: Path, runtime: str, sample: Path, duration: float) -> tuple[float, float]:
    """Images/s of ``predict`` on ``serving.max_batch`` decoded images at a time, on ``serving.torch_threads``,
    and its CPU ms per image (what a busy machine moves far less than the wall time)."""
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
    rates, cpu, deadline = [], [], time.monotonic() + duration
    while time.monotonic() < deadline or len(rates) < 3:
        started, started_cpu = time.perf_counter(), time.process_time()
        model.predict(images)
        rates.append(len(images) / (time.perf_counter() - started))
        cpu.append(1000 * (time.process_time() - started_cpu) / len(images))
    return statistics.median(rates), statistics.median(cpu)


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


Parts = dict[tuple[str, int, int], dict[str, float]]  # (server, clients, round) → ms of server CPU/request per part


async def grid(targets: dict[str, Target], clients: list[int], args: argparse.Namespace,
               parts: Parts) -> dict[str, list[Cell]]:
    """Every cell, A B then B A per round; ``parts`` gets where each cell's server CPU went."""
    cells: dict[str, list[Cell]] = {key: [] for key in targets}
    for round_ in range(1, args.rounds + 1):
        order = list(targets.items()) if round_ % 2 else list(targets.items())[::-1]  # A B, then B A: no order bias
        for n in clients:
            for key, target in order:
                before = where_cpu_goes(target.pid)
                cell = await measure(target, n, args.warmup, args.duration, round_)
                after = where_cpu_goes(target.pid)
                cell.server = key
                cells[key].append(cell)
                spent = {part: after[part] - before[part] for part in after}
                total = max(sum(spent.values()), 1e-9)
                parts[key, n, round_] = {part: cell.server_cpu_ms * value / total for part, value in spent.items()}
                shares = "  ".join(f"{part} {100 * value / total:.0f} %" for part, value in spent.items())
                print(f"  round {round_} {key:<12} {n:>3} clients: {cell.rps:7.1f} req/s  p50 {cell.p50_ms:6.1f} ms  "
                      f"server {cell.server_cpu_ms:6.2f} ms/req  batch {cell.mean_batch or 0:4.1f}  others "
                      f"{cell.others_cores:.2f} cores  load {cell.load1:.1f}  errors {cell.errors}\n"
                      f"      server CPU: {shares}", flush=True)
    return cells


def where_cpu_goes(pid: int) -> dict[str, float]:
    """CPU seconds so far of the server's event-loop thread (HTTP, multipart, decoding, answers), its other threads
    (the micro-batcher: preprocessing, forward, handing the batch to the log; runtime thread pools) and its child
    processes (the prediction-log writer; also threads that ended). Shares of a cell, warm-up and log drain included."""
    threads = 0.0
    loop = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        if task.name == str(pid):
            loop = seconds
        else:
            threads += seconds
    return {"event loop": loop, "batcher+pools": threads, "log writer": tree_cpu_seconds(pid) - loop - threads}


def paired(cells: list[Cell], clients: int) -> list[Cell]:
    """The cells at ``clients`` in round order: round r of one runtime ran right after round r of the other, so
    CPU per request is compared within a round (A/B/A/B) — the machine's other load moves both alike."""
    return sorted((c for c in cells if c.clients == clients), key=lambda c: c.round)


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
        parts: Parts = {}
        cells = asyncio.run(grid(digits, args.clients, args, parts))
        top = max(args.clients)
        if args.timm:
            timm = {k: t for k, t in targets.items() if not k.startswith("digits/")}
            cells |= asyncio.run(grid(timm, [top], args, parts))
            label = next(k for k in models if k != "digits")
            bundle, sample = models[label]
            for runtime in RUNTIMES:
                rate, cpu_ms = in_process_throughput(bundle, runtime, sample, args.duration)
                figures[f"{label}/{runtime} in-process img/s"] = rate
                figures[f"{label}/{runtime} in-process CPU ms/img"] = cpu_ms
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    figures["load_after"] = load_average()
    lines = ["", f"machine: {figures['machine']}; load average before {figures['load_before']}, after "
             f"{figures['load_after']}"]
    for n in args.clients:
        torch_cells, onnx_cells = paired(cells["digits/torch"], n), paired(cells["digits/onnx"], n)
        savings = [1 - o.server_cpu_ms / t.server_cpu_ms for t, o in zip(torch_cells, onnx_cells, strict=True)]
        saving = statistics.median(savings)
        figures[f"digits cpu saving @{n}"] = saving
        figures[f"digits cpu saving @{n} per round"] = savings
        lines.append(f"digits, {n:>2} clients: server CPU/request torch "
                     f"{statistics.median(c.server_cpu_ms for c in torch_cells):.2f} ms, onnx "
                     f"{statistics.median(c.server_cpu_ms for c in onnx_cells):.2f} ms (medians) → onnx "
                     f"{100 * saving:.0f} % lower, median of the rounds' paired savings "
                     f"{', '.join(f'{100 * s:.0f} %' for s in savings)} (goal ≥ {100 * GOAL_CPU_SAVING:.0f} %: "
                     f"{'met' if saving >= GOAL_CPU_SAVING else 'NOT met'}); req/s "
                     f"{best(torch_cells, n).rps:.0f} vs {best(onnx_cells, n).rps:.0f} (best round)")
        for runtime, runtime_cells in (("torch", torch_cells), ("onnx", onnx_cells)):
            split = {part: statistics.median(parts[f"digits/{runtime}", n, c.round][part] for c in runtime_cells)
                     for part in parts[f"digits/{runtime}", n, runtime_cells[0].round]}
            figures[f"digits/{runtime} @{n} ms/request by part"] = split
            lines.append(f"    {runtime:<5} ms/request by part (medians): "
                         + ", ".join(f"{part} {value:.2f}" for part, value in split.items()))
    if args.timm:
        for runtime in RUNTIMES:
            cell = best(cells[f"{label}/{runtime}"], top)
            inproc = figures[f"{label}/{runtime} in-process img/s"]
            ratio = cell.rps / inproc
            figures[f"{label}/{runtime} rest/in-process @{top}"] = ratio
            lines.append(f"{label} {runtime}: REST {cell.rps:.1f} req/s at {top} clients (mean batch "
                         f"{cell.mean_batch or 0:.1f}) / in-process {inproc:.1f} img/s = {ratio:.2f} (goal ≥ "
                         f"{GOAL_REST_OVER_INPROCESS}: {'met' if ratio >= GOAL_REST_OVER_INPROCESS else 'NOT met'})")
            # Under other load the wall-clock ratio says how the scheduler shared the cores; CPU says what it costs.
            # On idle cores the batcher thread (forward) has one core and the event loop + log writer the other, so
            # REST reaches min(1 / batcher CPU per request, cores / server CPU per request).
            split = parts[f"{label}/{runtime}", top, cell.round]
            cpu_ms = figures[f"{label}/{runtime} in-process CPU ms/img"]
            idle = min(1000 / split["batcher+pools"], usable_cores() * 1000 / cell.server_cpu_ms)
            estimate = idle / (1000 / cpu_ms)
            figures[f"{label}/{runtime} rest/in-process @{top} idle-core estimate"] = estimate
            lines.append(f"    CPU: forward in the server {split['batcher+pools']:.2f} ms/request (batcher thread), "
                         f"in-process {cpu_ms:.2f} ms/img; whole server {cell.server_cpu_ms:.2f} ms/request → on "
                         f"idle cores REST/in-process ≈ {estimate:.2f} (an estimate from CPU, not a measurement)")
    print("\n".join(lines))
    if args.json:
        cells_out = {key: [c.__dict__ for c in value] for key, value in cells.items()}
        args.json.write_text(json.dumps({"figures": figures, "cells": cells_out}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
