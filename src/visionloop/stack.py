"""The embedded stack on loopback: Prefect server, MLflow server, Evidently UI, REST server, deployments.

``up`` starts what is not already reachable and records each process (PID, command, port, log) in
``<state>/stack.json``; ``down`` stops exactly those processes, by PID, after checking each PID still
runs the command it started. Services given by ``PREFECT_API_URL`` / ``MLFLOW_TRACKING_URI`` are used
as they are and never started or stopped. The team profile (``visionloop.stack_team``) starts its processes
with the same helpers and records them in the same file; ``down`` stops those too (PostgreSQL by ``pg_ctl``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from visionloop.config import Settings
from visionloop.store.database import upgrade_embedded

HOST = "127.0.0.1"
PORTS = {"prefect": 4200, "mlflow": 5000, "evidently": 8001}  # the REST server: serving.port
# The worker before the servers it talks to; PostgreSQL, which they all write to, last.
STOP_ORDER = ("worker", "deployments", "serve", "evidently", "mlflow", "prefect", "postgres")


@dataclass
class Service:
    name: str
    pid: int
    url: str
    command: list[str]
    log: str


@dataclass
class StackUrls:
    prefect_api: str
    prefect_ui: str
    mlflow: str
    serve: str
    evidently: str


def stack_file(settings: Settings) -> Path:
    return settings.state_dir / "stack.json"


def read_services(settings: Settings) -> dict[str, Service]:
    path = stack_file(settings)
    if not path.exists():
        return {}
    return {name: Service(**data) for name, data in json.loads(path.read_text()).items()}


def _write_services(settings: Settings, services: dict[str, Service]) -> None:
    stack_file(settings).write_text(json.dumps({n: asdict(s) for n, s in services.items()}, indent=2))


def urls(settings: Settings) -> StackUrls:
    """Where each UI and API is: the configured servers, else the embedded ones."""
    serving = settings.params.serving
    prefect_api = settings.prefect_api_url or f"http://{HOST}:{PORTS['prefect']}/api"
    tracking = settings.tracking_uri
    mlflow = tracking if tracking.startswith("http") else f"http://{HOST}:{PORTS['mlflow']}"
    return StackUrls(
        prefect_api=prefect_api,
        prefect_ui=prefect_api.removesuffix("/api"),
        mlflow=mlflow,
        serve=f"http://{serving.host}:{serving.port}",
        evidently=f"http://{HOST}:{PORTS['evidently']}",
    )


def reachable(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status < 500
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


def service_environment(settings: Settings, u: StackUrls) -> dict[str, str]:
    """The environment every process of the stack shares: where each service is."""
    return {
        **os.environ,
        "VISIONLOOP_PROJECT_DIR": str(settings.root),
        "VISIONLOOP_STATE_DIR": str(settings.state_dir),
        "PREFECT_API_URL": u.prefect_api,
        "MLFLOW_TRACKING_URI": u.mlflow,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # Served deployments pick up runs (scheduled or started by the drift automation) within 2 s.
        "PREFECT_RUNNER_POLL_FREQUENCY": os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "2"),
    }


def _spawn(settings: Settings, name: str, command: list[str], url: str, env: dict[str, str]) -> Service:
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=settings.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return Service(name, process.pid, url, command, str(log))


Plan = list[tuple[str, list[str], str, str, dict[str, str]]]  # name, command, url, health url, environment


def up(settings: Settings, *, serve: bool = True, deployments: bool = True, evidently: bool = True,
       echo: Callable[[str], None] = print) -> StackUrls:
    """Migrate the embedded database, start the servers not configured elsewhere, then the REST server and
    deployments."""
    upgrade_embedded(settings.db_url)
    u = urls(settings)
    env = service_environment(settings, u)
    bin_dir = Path(sys.executable).parent
    plan: Plan = []
    if not settings.prefect_api_url:
        prefect_env_home = settings.state_dir / "prefect"
        prefect_env_home.mkdir(exist_ok=True)
        env_prefect = {**env, "PREFECT_HOME": str(prefect_env_home)}
        env_prefect.pop("PREFECT_API_URL")
        plan.append(("prefect", [str(bin_dir / "prefect"), "server", "start", "--host", HOST,
                                 "--port", str(PORTS["prefect"]), "--analytics-off"], u.prefect_ui,
                     f"{u.prefect_api}/health", env_prefect))
    if not settings.tracking_uri.startswith("http"):
        plan.append(("mlflow", [str(bin_dir / "mlflow"), "server", "--backend-store-uri", settings.tracking_uri,
                                "--default-artifact-root", str(settings.artifact_root),
                                "--artifacts-destination", str(settings.artifact_root),
                                "--host", HOST, "--port", str(PORTS["mlflow"]), "--workers", "1"],
                     u.mlflow, f"{u.mlflow}/health", env))
    if evidently:
        plan.append(evidently_service(settings, u, env))
    if serve:
        plan.append(("serve", [str(bin_dir / "visionloop"), "serve"], u.serve, f"{u.serve}/health", env))
    if deployments:
        plan.append(("deployments", [sys.executable, "-m", "flows.deployments"], u.prefect_ui, "", env))
    # Servers first, started together; then what needs them (the REST server, the deployments).
    start_services(settings, plan, ("prefect", "mlflow", "evidently"), echo)
    start_services(settings, plan, ("serve", "deployments"), echo)
    return u


def evidently_service(settings: Settings, u: StackUrls, env: dict[str, str]) -> tuple:
    """The Evidently UI on the project's workspace (the monitor's reports), as a plan entry."""
    workspace = settings.state_dir / "evidently"
    workspace.mkdir(exist_ok=True)
    port = u.evidently.rsplit(":", 1)[1]
    return ("evidently", [str(Path(sys.executable).parent / "evidently"), "ui", "--workspace", str(workspace),
                          "--host", HOST, "--port", port], u.evidently, f"{u.evidently}/api/projects", env)


def start_services(settings: Settings, plan: Plan, phase: tuple[str, ...], echo: Callable[[str], None]) -> None:
    """Start the planned services named in ``phase`` together (a slow start overlaps the others), record each in
    the stack file as soon as it is spawned (so ``down`` finds it even if start-up fails), then wait for each."""
    services = {n: s for n, s in read_services(settings).items() if is_running(s)}
    waiting = []
    for name, command, url, health, env in (item for item in plan if item[0] in phase):
        if name in services or (health and reachable(health)):
            echo(f"{name:<12} already running at {url}")
            continue
        service = _spawn(settings, name, command, url, env)
        services[name] = service
        _write_services(settings, services)
        waiting.append((service, health))
    for service, health in waiting:
        if health:
            wait_until(lambda h=health, s=service: reachable(h) or not is_running(s), 180, service.name)
        if not is_running(service):
            raise RuntimeError(f"{service.name} exited during start-up; see {service.log}")
        echo(f"{service.name:<12} started (pid {service.pid}) at {service.url}  log: {service.log}")


def record_service(settings: Settings, service: Service) -> None:
    """Add a service started some other way (PostgreSQL by ``pg_ctl``) to the stack file, for ``down``."""
    services = read_services(settings)
    services[service.name] = service
    _write_services(settings, services)


def is_running(service: Service) -> bool:
    """True if the PID is alive and still runs the command we started (PIDs get reused)."""
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return all(arg.encode() in cmdline for arg in service.command[1:])


def down(settings: Settings, echo: Callable[[str], None] = print, timeout: float = 20.0) -> list[str]:
    """Stop what ``up`` started (deployments first), by PID; nothing else."""
    services = read_services(settings)
    stopped = []
    for name in STOP_ORDER:
        service = services.pop(name, None)
        if service is None:
            continue
        if is_running(service):
            if name == "postgres":
                _stop_postgres(service)
            else:
                _terminate(service, timeout)
            echo(f"{name:<12} stopped (pid {service.pid})")
            stopped.append(name)
        else:
            echo(f"{name:<12} was not running")
        _write_services(settings, services)
    for name in list(services):  # anything unexpected in the file: stop it the same careful way
        service = services.pop(name)
        if is_running(service):
            _terminate(service, timeout)
            stopped.append(name)
    stack_file(settings).unlink(missing_ok=True)
    return stopped


def _stop_postgres(service: Service) -> None:
    """PostgreSQL is stopped by ``pg_ctl stop`` (a fast shutdown keeps committed work), not by a signal."""
    from visionloop.stack_postgres import Cluster, stop

    data = Path(service.command[service.command.index("-D") + 1])
    stop(Cluster(data.parent, 0))


def _terminate(service: Service, timeout: float) -> None:
    # SIGTERM to the process group: `prefect.serve` pauses schedules on SIGTERM (SIGINT does not stop it).
    try:
        os.killpg(service.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_running(service):
        time.sleep(0.3)
    if is_running(service):
        os.killpg(service.pid, signal.SIGKILL)
