"""Benchmark ``visionloop serve --workers 2`` against ``--workers 1`` at 32 clients (goal ≥ 1.3×).

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/serve_workers.py                    # 32 clients, 10 s per cell, 2 rounds
    .venv/bin/python benchmarks/serve_workers.py --clients 8 32 --duration 8 --rounds 3

Both servers serve the same bundle (``--model-uri <bundle dir>``, prediction log in a temporary state dir,
one per server) on free loopback ports, started together; the load generator and the measurement are
``benchmarks/serving.py``'s (its raw HTTP/1.1 client: one keep-alive connection per client, pre-encoded
single-image multipart bodies; the server CPU per request counts the whole process tree: supervisor,
workers, their prediction-log writers). Cells alternate between the two servers within each round; the
best round per cell is reported. With N workers the kernel spreads the clients' connections over the N
processes accepting on the one socket.

The load generator shares the cores with the servers, so each cell also reports its CPU per request and the
*ceiling*: the req/s the cores left by other processes could serve at that server + client CPU per request,
``(cores - others' cores) / (server ms + client ms)``. A worker count running near its ceiling is bound by the
machine (and by the load generator's share of it), not by how many processes serve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from machine import describe, usable_cores  # benchmarks/machine.py
from serving import BIN, BOUNDARY, HOST, ROOT, Servers, Target, free_port, measure, multipart_body, server_environment

WORKERS = (1, 2)


def start(servers: Servers, bundle: Path, workdir: Path, sample: Path) -> dict[int, Target]:
    """One ``visionloop serve`` per worker count, each with its own state dir; ready once every worker is."""
    import httpx

    targets = {}
    for workers in WORKERS:
        env = server_environment(workdir / f"w{workers}")
        port = free_port()
        command = [str(BIN / "visionloop"), "serve", "--model-uri", str(bundle), "--host", HOST, "--port", str(port),
                   "--workers", str(workers), "--log-level", "warning"]
        proc = servers.start(f"w{workers}", command, env)
        url = f"http://{HOST}:{port}"
        servers.wait_ready(f"w{workers}", f"{url}/ready")
        for _ in range(600):  # /ready answers once one worker is; wait for all of them
            listed = httpx.get(f"{url}/health", timeout=10).json()["workers"]
            if len(listed) == workers and all(w["model_version"] for w in listed):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"--workers {workers}: not every worker loaded the model")
        body = multipart_body(sample.read_bytes(), sample.name)
        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        targets[workers] = Target("visionloop", f"{url}/predict", body, headers, proc.pid)
        print(f"  --workers {workers} ready on {url}", flush=True)
    return targets


async def grid(targets: dict[int, Target], args: argparse.Namespace) -> list[dict]:
    cells = []
    for round_ in range(1, args.rounds + 1):
        for clients in args.clients:
            for workers in WORKERS if round_ % 2 else WORKERS[::-1]:
                cell = await measure(targets[workers], clients, args.warmup, args.duration, round_)
                cells.append({"workers": workers, **asdict(cell)})
                print(f"  round {round_} --workers {workers} {clients:>3} clients: {cell.rps:8.1f} req/s  "
                      f"p50 {cell.p50_ms:6.1f} ms  p99 {cell.p99_ms:6.1f} ms  server {cell.server_cpu_ms:.2f} ms/req  "
                      f"client {cell.client_cpu_ms:.2f} ms/req  "
                      f"others {cell.others_cores:.2f} cores  load {cell.load1:.2f}  errors {cell.errors}", flush=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="recorded seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds before each cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=ROOT / "models", help="bundle folder (holds bundle/...)")
    parser.add_argument("--json", type=Path, help="also write the raw cells here")
    args = parser.parse_args(argv)
    bundle = args.bundle.resolve()
    samples = sorted((bundle / "bundle" / "test_set").glob("*.png"))
    if not samples:
        parser.error(f"{bundle} is not a trained bundle with a test set; train first (`visionloop train`)")
    workdir = Path(tempfile.mkdtemp(prefix="visionloop-workers-bench-"))
    servers = Servers(workdir)
    try:
        targets = start(servers, bundle, workdir, samples[0])
        cells = asyncio.run(grid(targets, args))
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n`visionloop serve --workers N`, best of {args.rounds} rounds — {describe(with_load=True)}")
    print("| clients | workers | req/s | p50 ms | p99 ms | server CPU ms/req | client CPU ms/req | others' cores "
          "| ceiling req/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    best = {}
    for clients in args.clients:
        for workers in WORKERS:
            c = max((x for x in cells if x["workers"] == workers and x["clients"] == clients), key=lambda x: x["rps"])
            best[clients, workers] = c
            print(f"| {clients} | {workers} | {c['rps']:.0f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | "
                  f"{c['server_cpu_ms']:.2f} | {c['client_cpu_ms']:.2f} | {c['others_cores']:.2f} | "
                  f"{ceiling(c):.0f} |")
    for clients in args.clients:
        ratio = best[clients, 2]["rps"] / best[clients, 1]["rps"] if best[clients, 1]["rps"] else float("nan")
        print(f"{clients} clients: --workers 2 / --workers 1 = {ratio:.2f}× (goal ≥ 1.3 at 32)")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(with_load=True), "cells": cells}, indent=2))
    return 0


def ceiling(cell: dict) -> float:
    """The req/s the cores other processes left could serve at this cell's server + client CPU per request."""
    per_request_s = (cell["server_cpu_ms"] + cell["client_cpu_ms"]) / 1000
    return max(0.0, usable_cores() - cell["others_cores"]) / per_request_s if per_request_s else float("nan")


if __name__ == "__main__":
    sys.exit(main())
