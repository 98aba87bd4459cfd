"""Benchmark ``visionloop serve`` against the HTTP floor of the stack and ``mlflow models serve``.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/serving.py                       # 10 s per cell, 1 / 8 / 32 clients
    .venv/bin/python benchmarks/serving.py --duration 8 --clients 1 8 32 --rounds 2
    .venv/bin/python benchmarks/serving.py --shadow 1.0 --clients 32 --rounds 3   # visionloop vs + shadow

Three servers on free loopback ports, each a subprocess (uvicorn, 1 worker, access log on as each ships):

* ``bare``       — a FastAPI endpoint that parses the same multipart upload and returns a constant:
                   the floor of FastAPI + uvicorn + python-multipart on this machine;
* ``visionloop`` — ``visionloop serve --model-uri <bundle dir>`` (prediction log in a temporary state dir);
* ``shadow``     — with ``--shadow SHARE`` (instead of ``bare`` and ``mlflow``): the visionloop server with a
                   challenger (the same bundle as version "2", through ``create_app``'s challenger source, as
                   the registry's ``challenger`` alias would give it) shadow-scoring SHARE of the requests;
                   the ratio to ``visionloop`` at the top client count is the cost of shadow scoring;
* ``mlflow``     — ``mlflow models serve -m models:/NAME/1 --env-manager local``, the same weights logged
                   as the pt2 pytorch flavor (batch-2 input example) into a throwaway MLflow store.
                   It gets the image already decoded and preprocessed to the 1×C×H×W float tensor its
                   ``/invocations`` wants — less work than decoding a PNG upload.

This script is the load generator, in its own process. First each server gets one unrecorded
``--server-warmup`` at 8 clients (``mlflow models serve``'s first few hundred requests are several times
slower than later ones). Then per cell, N clients, each with one keep-alive connection, send pre-encoded
single-image bodies back to back for ``--warmup`` seconds and then ``--duration`` recorded seconds. The
load generator shares the cores with the servers, so by default it is a minimal HTTP/1.1 client on asyncio
streams (``--client raw``, ~0.06 ms of CPU per request); ``--client httpx`` (one ``httpx.AsyncClient`` per
client, ~0.8 ms per request) is kept to compare with earlier figures — it takes more CPU than the bare
server itself, and so caps the bare server far more than the others.

Reported per cell: requests/s, p50/p99 latency, the server's CPU per request (utime+stime of the server
process and all its descendants, from /proc), the load generator's own CPU per request, and the CPU other
processes on the machine used meanwhile (the cores are shared). Cells are interleaved (for each client
count: bare, visionloop, mlflow) so that the ratios at the highest client count come from the same
minute. Every server is stopped at the end, also on errors and Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from machine import cpu_model, usable_cores  # benchmarks/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
MODEL_NAME = "serving-benchmark"
BOUNDARY = "visionloop-benchmark-boundary"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("bare", "visionloop", "mlflow")
GOAL_BARE = 0.60
GOAL_MLFLOW = 3.0
GOAL_SHADOW = 0.85  # shadow scoring at 100 % may cost the champion's answers at most 15 % of the throughput


# --- the servers' side (hidden sub-commands run as subprocesses) -------------------------------------


def serve_bare(port: int) -> None:
    """The HTTP floor: parse the multipart upload, read every file, answer a constant."""
    import uvicorn
    from fastapi import FastAPI, File, UploadFile

    app = FastAPI(title="bare floor")

    @app.post("/predict")
    async def predict(files: list[UploadFile] = File(...)) -> dict[str, Any]:
        for upload in files:
            await upload.read()
        return {"predictions": [{"index": i, "label": "0", "confidence": 1.0} for i in range(len(files))]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host=HOST, port=port, log_level="info")


def serve_shadow(port: int, bundle: Path, share: float) -> None:
    """``visionloop serve``'s single-worker app over ``bundle`` as champion "1", with the same bundle as challenger
    "2" shadow-scoring ``share`` of the requests."""
    import logging

    import uvicorn

    from visionloop.config import Settings
    from visionloop.serving.app import create_app
    from visionloop.serving.sources import LocalBundleSource
    from visionloop.store.database import upgrade_embedded

    settings = Settings.load(ROOT).with_overrides({"serving": {"host": HOST, "port": port,
                                                               "shadow": {"share": share}}})
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upgrade_embedded(settings.db_url)
    champion = LocalBundleSource(bundle, name=settings.model_name, version="1", settings=settings)
    challenger = LocalBundleSource(bundle, name=settings.model_name, version="2", settings=settings)
    app = create_app(settings, champion, challenger=challenger)
    uvicorn.run(app, host=HOST, port=port, log_level="info")


def register_model(bundle: Path, store: Path, sample: Path) -> None:
    """Log the bundle's network as MLflow's pt2 pytorch flavor into ``store``, register it, and write
    the preprocessed sample as the ``/invocations`` body (``store/invocations.json``)."""
    import mlflow
    import numpy as np
    import torch
    from PIL import Image

    from visionloop.models.bundle import ServableModel

    model = ServableModel.from_dir(bundle)
    image = np.asarray(Image.open(sample))
    tensor = model.preprocess([image])
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    experiment = mlflow.create_experiment(MODEL_NAME, artifact_location=(store / "artifacts").as_uri())
    example = np.zeros((2, *tensor.shape[1:]), dtype=np.float32)  # batch >= 2 keeps the batch dim dynamic
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(
            model.network.eval(),
            name="model",
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
            registered_model_name=MODEL_NAME,
        )
    (store / "invocations.json").write_text(json.dumps({"inputs": tensor.numpy().tolist()}))
    with torch.inference_mode():
        expected = int(model.network(tensor).argmax(1).item())
    (store / "expected.json").write_text(
        json.dumps({"version": str(info.registered_model_version), "label": model.classes[expected]})
    )


# --- measuring -----------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from "state" (field 3) on


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of ``root`` and every live descendant, plus the reaped children ``root`` waited for."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    ticks = 0
    for pid in tree:
        with contextlib.suppress(OSError, IndexError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == root:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all processes used so far (the ``cpu`` line of /proc/stat, idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine() -> dict[str, Any]:
    return {"nproc": usable_cores(), "cpu_model": cpu_model(), "python": sys.version.split()[0]}


@dataclass
class Cell:
    server: str
    clients: int
    round: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu_ms: float = 0.0  # per request
    client_cpu_ms: float = 0.0  # per request
    others_cores: float = 0.0  # CPU used by every other process on the machine, in cores
    load1: float = 0.0
    mean_batch: float | None = None  # visionloop: images per forward pass
    log_backlog: int | None = None  # visionloop: predictions queued for the log at the end of the window
    shadow_scored: int | None = None  # shadow: images the challenger scored for the window's requests
    shadow_skipped: int | None = None  # shadow: sampled requests skipped (the shadow queue was full)
    error_samples: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    pid: int


class Window:
    """Shared between the clients of one cell: when to record and when to stop."""

    def __init__(self) -> None:
        self.t0 = float("inf")
        self.t1 = float("inf")
        self.stop = False
        self.latencies: list[float] = []
        self.errors: list[str] = []


def _record(window: Window, start: float, problem: str | None) -> None:
    end = time.perf_counter()
    if window.t0 <= end <= window.t1:
        if problem is None:
            window.latencies.append(end - start)
        else:
            window.errors.append(problem)


async def _raw_client(target: Target, window: Window, ready: asyncio.Event) -> None:
    """HTTP/1.1 keep-alive over one asyncio connection, the request bytes built once: ~0.06 ms of CPU per
    request, so the cores stay with the server under test (httpx costs ~0.8 ms, more than bare FastAPI)."""
    url = urlsplit(target.url)
    lines = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(target.body)}"]
    lines += [f"{name}: {value}" for name, value in target.headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + target.body
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    await ready.wait()
    try:
        while not window.stop:
            start = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(url.hostname, url.port)
                reader, writer = connection
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status, length, close = int(head[9:12]), None, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    elif name.strip().lower() == b"connection":
                        close = value.strip().lower() == b"close"
                if length is None:
                    raise ValueError("response without Content-Length (the raw client reads no chunked bodies)")
                body = await reader.readexactly(length)
                problem = None if status == 200 else f"HTTP {status}: {body[:200]!r}"
                if close:
                    writer.close()
                    connection = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if connection is not None:
                    connection[1].close()
                connection = None
            _record(window, start, problem)
    finally:
        if connection is not None:
            connection[1].close()


async def _httpx_client(target: Target, window: Window, ready: asyncio.Event) -> None:
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        await ready.wait()
        while not window.stop:
            start = time.perf_counter()
            try:
                response = await client.post(target.url, content=target.body, headers=target.headers)
                problem = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            _record(window, start, problem)


CLIENTS = {"raw": _raw_client, "httpx": _httpx_client}


async def _visionloop_health(target: Target) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(target.url.rsplit("/", 1)[0] + "/health")
        return response.json()


async def _drain_log(target: Target, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the visionloop server has written every queued prediction and shadow-scored every queued
    request (that work would steal CPU from the next cell); returns the last /health."""
    deadline = time.monotonic() + timeout
    health = await _visionloop_health(target)
    while (health["log"]["queued"] > 0 or health["shadow"]["queued"] > 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        health = await _visionloop_health(target)
    return health


async def measure(
    target: Target, clients: int, warmup: float, duration: float, round_: int, client: str = "raw"
) -> Cell:
    """One cell: ``clients`` concurrent clients, ``warmup`` s unrecorded, then ``duration`` s recorded."""
    cell = Cell(target.name, clients, round_)
    before_health = await _drain_log(target) if target.name in ("visionloop", "shadow") else None
    window = Window()
    ready = asyncio.Event()
    tasks = [asyncio.create_task(CLIENTS[client](target, window, ready)) for _ in range(clients)]
    ready.set()
    try:
        await asyncio.sleep(warmup)
        server0, busy0, own0 = tree_cpu_seconds(target.pid), machine_busy_seconds(), own_cpu_seconds()
        window.t0 = time.perf_counter()
        await asyncio.sleep(duration)
        window.t1 = time.perf_counter()
        server1, busy1, own1 = tree_cpu_seconds(target.pid), machine_busy_seconds(), own_cpu_seconds()
        window.stop = True
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    cell.load1 = load_average()
    n = len(window.latencies)
    cell.requests, cell.errors, cell.error_samples = n, len(window.errors), sorted(set(window.errors))[:3]
    cell.seconds = window.t1 - window.t0
    cell.rps = n / cell.seconds
    server_cpu = server1 - server0
    if before_health is not None:
        end_health = await _visionloop_health(target)
        cell.log_backlog = int(end_health["log"]["queued"])
        drained = await _drain_log(target)
        server_cpu += tree_cpu_seconds(target.pid) - server1  # the log writer's backlog is this window's work
        batches = drained["batches"] - before_health["batches"]
        cell.mean_batch = (drained["images"] - before_health["images"]) / batches if batches else None
        if target.name == "shadow":
            cell.shadow_scored = drained["shadow"]["scored"] - before_health["shadow"]["scored"]
            cell.shadow_skipped = drained["shadow"]["skipped"] - before_health["shadow"]["skipped"]
    if n:
        ordered = sorted(window.latencies)
        cell.p50_ms = 1000 * statistics.median(ordered)
        cell.p99_ms = 1000 * ordered[min(n - 1, int(round(0.99 * (n - 1))))]
        cell.server_cpu_ms = 1000 * server_cpu / n
        cell.client_cpu_ms = 1000 * (own1 - own0) / n
    cell.others_cores = max(0.0, (busy1 - busy0) - (server1 - server0) - (own1 - own0)) / cell.seconds
    return cell


# --- running the servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Servers:
    """The server subprocesses, each in its own session so that stopping it stops its children too."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs[name] = self.workdir / f"{name}.log"
        with open(self.logs[name], "wb") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, name: str, url: str, timeout: float = 180.0) -> float:
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} server exited with {self.procs[name].returncode}:\n{self.tail(name)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.25)
        raise RuntimeError(f"{name} server not ready after {timeout:.0f} s:\n{self.tail(name)}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def server_environment(workdir: Path) -> dict[str, str]:
    from visionloop.config import OFFLINE_ENVIRONMENT

    env = {**os.environ, **OFFLINE_ENVIRONMENT}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve runs `uvicorn` from PATH
    env["VISIONLOOP_STATE_DIR"] = str(workdir / "state")  # prediction log and stored images stay in the temp dir
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def multipart_body(image: bytes, filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


_MAIN_TASK: list[asyncio.Task] = []  # the running grid, which SIGTERM cancels the way asyncio.run handles Ctrl-C


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(_signum: int, _frame: Any) -> None:
        if _MAIN_TASK and not _MAIN_TASK[0].done():
            _MAIN_TASK[0].get_loop().call_soon_threadsafe(_MAIN_TASK[0].cancel)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def server_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The servers measured: bare, visionloop, mlflow; with ``--shadow``, visionloop and visionloop + shadow."""
    return ("visionloop", "shadow") if args.shadow is not None else SERVERS


def start_servers(servers: Servers, bundle: Path, workdir: Path, sample: Path, names: tuple[str, ...],
                  share: float | None) -> dict[str, Target]:
    """Register the model (for mlflow), start the servers together, check that they answer alike."""
    import httpx

    env = server_environment(workdir)
    store = workdir / "mlflow"
    store.mkdir()
    expected = {"version": "1", "label": None}
    if "mlflow" in names:
        print("logging the bundle's network to a throwaway MLflow store ...", flush=True)
        started = time.monotonic()
        register = ["_register", "--bundle", str(bundle), "--store", str(store), "--sample", str(sample)]
        subprocess.run([sys.executable, __file__, *register], env=env, cwd=ROOT, check=True)
        expected = json.loads((store / "expected.json").read_text())
        print(f"  registered {MODEL_NAME} v{expected['version']} in {time.monotonic() - started:.1f} s", flush=True)

    ports = {name: free_port() for name in names}
    commands = {
        "bare": [sys.executable, __file__, "_bare", "--port", str(ports.get("bare"))],
        "visionloop": [str(BIN / "visionloop"), "serve", "--model-uri", str(bundle), "--host", HOST,
                       "--port", str(ports.get("visionloop"))],
        "shadow": [sys.executable, __file__, "_shadow", "--port", str(ports.get("shadow")), "--bundle", str(bundle),
                   "--share", str(share)],
        "mlflow": [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}/{expected['version']}",
                   "--env-manager", "local", "--host", HOST, "-p", str(ports.get("mlflow")), "--workers", "1"],
    }
    shadow_env = {**env, "VISIONLOOP_STATE_DIR": str(workdir / "shadow-state")}  # its own log, images, spool
    procs = {name: servers.start(name, commands[name], shadow_env if name == "shadow" else env) for name in names}
    ready_urls = {"bare": "/health", "visionloop": "/ready", "shadow": "/ready", "mlflow": "/ping"}
    for name in names:
        seconds = servers.wait_ready(name, f"http://{HOST}:{ports[name]}{ready_urls[name]}")
        print(f"  {name:<10} ready on {HOST}:{ports[name]} ({seconds:.1f} s after start)", flush=True)

    upload = multipart_body(sample.read_bytes(), sample.name)
    multipart = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    targets = {
        name: Target(name, f"http://{HOST}:{ports[name]}/predict", upload, multipart, procs[name].pid)
        for name in names if name != "mlflow"
    }
    if "shadow" in names:
        wait_for_challenger(f"http://{HOST}:{ports['shadow']}/health")
    if "mlflow" not in names:
        return targets
    targets["mlflow"] = Target(
        "mlflow", f"http://{HOST}:{ports['mlflow']}/invocations", (store / "invocations.json").read_bytes(),
        {"content-type": "application/json"}, procs["mlflow"].pid,
    )
    answers = {}
    for name, target in targets.items():
        response = httpx.post(target.url, content=target.body, headers=target.headers, timeout=60.0)
        response.raise_for_status()
        answers[name] = response.json()
    vl_label = answers["visionloop"]["predictions"][0]["label"]
    logits = answers["mlflow"]["predictions"][0]
    mlflow_label = str(max(range(len(logits)), key=logits.__getitem__))
    print(f"  same image: visionloop says {vl_label!r}, mlflow's argmax {mlflow_label!r}, "
          f"the bundle {expected['label']!r}", flush=True)
    if not vl_label == mlflow_label == expected["label"]:
        raise RuntimeError("the servers disagree on the sample image: not the same model?")
    return targets


def wait_for_challenger(health_url: str, timeout: float = 60.0) -> None:
    """Until the shadow server has its challenger loaded (it is followed like the champion, a poll later)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(health_url, timeout=5.0).json()["shadow"]["challenger_version"] == "2":
            print("  shadow     challenger v2 loaded", flush=True)
            return
        time.sleep(0.25)
    raise RuntimeError(f"the shadow server loaded no challenger within {timeout:.0f} s")


# --- report ---------------------------------------------------------------------------------------------


def best_cells(cells: list[Cell]) -> dict[tuple[str, int], Cell]:
    """Per (server, clients): the round with the most requests/s."""
    best: dict[tuple[str, int], Cell] = {}
    for cell in cells:
        key = (cell.server, cell.clients)
        if key not in best or cell.rps > best[key].rps:
            best[key] = cell
    return best


def report(cells: list[Cell], info: dict[str, Any], args: argparse.Namespace) -> str:
    best = best_cells(cells)
    names = server_names(args)
    lines = [
        f"Machine: {info['nproc']} cores ({info['cpu_model']}), Python {info['python']}; load generator: "
        f"{args.client}; "
        f"load average {info['load_before']:.2f} before, {info['load_after']:.2f} after "
        f"(1 min); each server warmed up {args.server_warmup:g} s at 8 clients, then cells of {args.duration:g} s "
        f"after {args.warmup:g} s warm-up, "
        f"{args.rounds} round(s){', best round per cell' if args.rounds > 1 else ''}.",
        "",
        "| server | clients | req/s | p50 ms | p99 ms | server CPU ms/req | client CPU ms/req "
        "| other procs (cores) | load 1m | errors | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for clients in args.clients:
        for name in names:
            cell = best.get((name, clients))
            if cell is None:
                continue
            note = ""
            if cell.mean_batch is not None:
                note = f"mean forward batch {cell.mean_batch:.1f}"
                if cell.log_backlog:
                    note += f", log backlog {cell.log_backlog} at end"
            if name == "mlflow":
                note = "pre-decoded tensor (JSON)"
            if cell.shadow_scored is not None:
                note += f", challenger scored {cell.shadow_scored} images, skipped {cell.shadow_skipped} requests"
            lines.append(
                f"| {name} | {clients} | {cell.rps:,.0f} | {cell.p50_ms:.1f} | {cell.p99_ms:.1f} "
                f"| {cell.server_cpu_ms:.2f} | {cell.client_cpu_ms:.2f} | {cell.others_cores:.2f} "
                f"| {cell.load1:.2f} | {cell.errors} | {note} |"
            )
    top = max(args.clients)
    bare, vl, ml, shadow = (best.get((name, top)) for name in (*SERVERS, "shadow"))
    lines.append("")
    if vl and shadow and vl.rps and vl.server_cpu_ms:
        ratio = shadow.rps / vl.rps
        lines += [
            f"Shadow scoring at share {args.shadow:g}, {top} clients (same run):",
            f"- visionloop + shadow / visionloop = {ratio:.2f} of the throughput (goal >= {GOAL_SHADOW:.2f}: "
            f"{'met' if ratio >= GOAL_SHADOW else 'MISSED'}); server CPU per request {shadow.server_cpu_ms:.2f} vs "
            f"{vl.server_cpu_ms:.2f} ms (+{shadow.server_cpu_ms - vl.server_cpu_ms:.2f} ms: the challenger's forward, "
            "its log rows and the shadow queue's work for the window's requests)",
        ]
    if vl and bare and ml and bare.rps and ml.rps and vl.server_cpu_ms:
        vs_bare, vs_ml = vl.rps / bare.rps, vl.rps / ml.rps
        lines += [
            f"Ratios at {top} clients (same run):",
            f"- visionloop / bare   = {vs_bare:.2f} of the throughput (goal >= {GOAL_BARE:.2f}: "
            f"{'met' if vs_bare >= GOAL_BARE else 'MISSED'}); server CPU per request "
            f"{vl.server_cpu_ms:.2f} vs {bare.server_cpu_ms:.2f} ms "
            f"(bare/visionloop = {bare.server_cpu_ms / vl.server_cpu_ms:.2f})",
            f"- visionloop / mlflow = {vs_ml:.2f}x the throughput (goal >= {GOAL_MLFLOW:.0f}x: "
            f"{'met' if vs_ml >= GOAL_MLFLOW else 'MISSED'}); server CPU per request "
            f"mlflow/visionloop = {ml.server_cpu_ms / vl.server_cpu_ms:.2f}x",
        ]
    lines += [
        "",
        "bare and visionloop receive a multipart PNG upload (the same bytes); mlflow receives the same image "
        "already decoded and preprocessed, as JSON {\"inputs\": 1x1xHxW floats} — less work for it. "
        "Server CPU includes child processes and, for visionloop, the prediction-log writer's work for the "
        "window. The load generator shares the cores: 'client CPU' is its own cost per request, "
        "'other procs' is what everything else on the machine used meanwhile.",
    ]
    errors = [c for c in cells if c.errors]
    for cell in errors:
        lines.append(f"errors in {cell.server}/{cell.clients} round {cell.round}: {cell.error_samples}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------------


async def run_grid(targets: dict[str, Target], args: argparse.Namespace) -> list[Cell]:
    _MAIN_TASK[:] = [asyncio.current_task()]
    if args.server_warmup > 0:  # mlflow's first few hundred requests cost 3-25x the CPU of later ones
        for name in server_names(args):
            cell = await measure(targets[name], 8, 0.0, args.server_warmup, 0, args.client)
            print(f"  warm-up {name:<10} {cell.requests} requests in {cell.seconds:.0f} s (not reported)", flush=True)
    cells = []
    for round_ in range(1, args.rounds + 1):
        for clients in args.clients:
            for name in server_names(args):
                cell = await measure(targets[name], clients, args.warmup, args.duration, round_, args.client)
                cells.append(cell)
                print(
                    f"  round {round_} {name:<10} {clients:>3} clients: {cell.rps:8.1f} req/s  "
                    f"p50 {cell.p50_ms:6.1f} ms  p99 {cell.p99_ms:6.1f} ms  server {cell.server_cpu_ms:.2f} ms/req  "
                    f"client {cell.client_cpu_ms:.2f} ms/req  others {cell.others_cores:.2f} cores  "
                    f"load {cell.load1:.2f}  errors {cell.errors}",
                    flush=True,
                )
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="recorded seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds before each cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per cell")
    parser.add_argument(
        "--server-warmup", type=float, default=10.0, help="unrecorded seconds at 8 clients per server before the grid"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the grid; the best round per cell is reported")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models", help="bundle folder (holds bundle/...)")
    parser.add_argument("--json", type=Path, help="also write the raw cells and the machine here")
    parser.add_argument(
        "--client", choices=sorted(CLIENTS), default="raw",
        help="load generator: raw (HTTP/1.1 on asyncio streams, ~0.06 ms CPU/request) or httpx (~0.8 ms)",
    )
    parser.add_argument(
        "--shadow", type=float, metavar="SHARE",
        help="measure visionloop against visionloop with a challenger shadow-scoring SHARE (0-1) of the requests "
        "(instead of bare and mlflow)",
    )
    args = parser.parse_args(argv)
    bundle = args.bundle.resolve()
    samples = sorted((bundle / "bundle" / "test_set").glob("*.png"))
    if not (bundle / "bundle" / "state_dict.pt").is_file() or not samples:
        parser.error(f"{bundle} is not a trained bundle with a test set; train first (`visionloop train`)")

    info = machine()
    info["load_before"] = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="visionloop-serving-bench-"))
    servers = Servers(workdir)
    try:
        with sigterm_as_interrupt():
            names = server_names(args)
            targets = start_servers(servers, bundle, workdir, samples[0], names, args.shadow)
            print(f"measuring {len(args.clients) * len(names) * args.rounds} cells ...", flush=True)
            cells = asyncio.run(run_grid(targets, args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; stopping the servers", file=sys.stderr)
        return 130
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    info["load_after"] = load_average()
    print()
    print(report(cells, info, args))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "cells": [asdict(c) for c in cells]}, indent=2))
    return 0


def hidden(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["_bare", "_register", "_shadow"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--sample", type=Path)
    parser.add_argument("--share", type=float)
    args = parser.parse_args(argv)
    if args.mode == "_bare":
        serve_bare(args.port)
    elif args.mode == "_shadow":
        serve_shadow(args.port, args.bundle, args.share)
    else:
        register_model(args.bundle, args.store, args.sample)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        hidden(sys.argv[1:])
    else:
        sys.exit(main())
