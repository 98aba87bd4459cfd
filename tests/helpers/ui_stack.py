"""The UIs a user opens, as real processes on free loopback ports: a Prefect server with its own home and SQLite,
an MLflow server on a project's tracking store, ``visionloop serve``, and Evidently's UI on its workspace.

Each is its own process group (stopped with SIGTERM, as ``visionloop down`` does); they start together, so a
slow import in one overlaps the others, and the block waits until every health URL answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from helpers.project import VENV_BIN
from helpers.server import stop_group
from visionloop.config import OFFLINE_ENVIRONMENT, Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class UiStack:
    """Base URLs of the running UIs (None: not started) and their log files."""

    prefect: str
    mlflow: str
    serve: str
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect}/api"


def _terminate_all(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to every process group now, so that they stop together (``stop_group`` then waits for each)."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def ui_stack(settings: Settings, home: Path, *, timeout: float = 300) -> Iterator[UiStack]:
    """Start Prefect, MLflow and ``visionloop serve`` for ``settings``' project (logs and Prefect's home under
    ``home``) and yield their URLs. MLflow serves the project's own store (the same flags as ``visionloop up``);
    ``visionloop serve`` sees the project through ``VISIONLOOP_PROJECT_DIR``.
    """
    ports = {name: free_port() for name in ("prefect", "mlflow", "serve")}
    stack = UiStack(
        prefect=f"http://127.0.0.1:{ports['prefect']}",
        mlflow=f"http://127.0.0.1:{ports['mlflow']}",
        serve=f"http://127.0.0.1:{ports['serve']}",
    )
    base_env = {**os.environ, **OFFLINE_ENVIRONMENT, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "VISIONLOOP_PROJECT_DIR": str(settings.root)}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        base_env.pop(key, None)
    prefect_home = home / "prefect-home"
    prefect_home.mkdir(parents=True, exist_ok=True)
    artifacts = str(settings.artifact_root)
    commands: dict[str, tuple[list[str], dict[str, str], str]] = {
        "prefect": ([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                     "--port", str(ports["prefect"]), "--analytics-off"],
                    # The UI asks this address for its data (by default the standard port, not --port).
                    {**base_env, "PREFECT_HOME": str(prefect_home), "PREFECT_UI_API_URL": stack.prefect_api},
                    f"{stack.prefect_api}/health"),
        "mlflow": ([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", settings.tracking_uri,
                    "--default-artifact-root", artifacts, "--artifacts-destination", artifacts,
                    "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1"],
                   base_env, f"{stack.mlflow}/health"),
        "serve": ([str(VENV_BIN / "visionloop"), "serve", "--port", str(ports["serve"]), "--log-level", "warning"],
                  base_env, f"{stack.serve}/ready"),
    }
    with _started(commands, settings.root, home, stack.logs, timeout):
        yield stack


def evidently_command(settings: Settings, port: int) -> tuple[list[str], dict[str, str], str]:
    """``evidently ui`` on the project's workspace: command, environment, health URL."""
    workspace = settings.state_dir / "evidently"
    workspace.mkdir(exist_ok=True)
    env = {**os.environ, **OFFLINE_ENVIRONMENT}
    return ([str(VENV_BIN / "evidently"), "ui", "--workspace", str(workspace), "--host", "127.0.0.1",
             "--port", str(port)], env, f"http://127.0.0.1:{port}/api/projects")


@contextmanager
def evidently_ui(settings: Settings, home: Path, timeout: float = 300) -> Iterator[str]:
    """Evidently's UI on the project's workspace; yields its URL. Start it once the checks are in the workspace:
    Evidently 0.7.23's UI re-reads a project's ``metadata.json`` on every change, and one read half-written (a
    new project, the dashboard rewritten by the next check) kills its watcher thread: the UI then shows nothing
    new until restarted."""
    port = free_port()
    with _started({"evidently": evidently_command(settings, port)}, settings.root, home, {}, timeout):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def _started(commands: dict[str, tuple[list[str], dict[str, str], str]], cwd: Path, home: Path,
             logs: dict[str, Path], timeout: float) -> Iterator[None]:
    """Run each command in its own process group (log under ``home``) until every health URL answers 200."""
    with ExitStack() as running:
        processes: dict[str, subprocess.Popen] = {}
        for name, (command, env, _) in commands.items():
            logs[name] = home / f"{name}.log"
            with open(logs[name], "wb") as out:
                processes[name] = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True)
            running.callback(stop_group, processes[name], 20)
        running.callback(_terminate_all, list(processes.values()))  # runs first: all stop at once
        deadline = time.monotonic() + timeout
        waiting = {name: health for name, (_, _, health) in commands.items()}
        while waiting:
            for name in list(waiting):
                if processes[name].poll() is not None:
                    raise AssertionError(f"{name} exited during start-up:\n{logs[name].read_text()[-3000:]}")
                if _healthy(waiting[name]):
                    del waiting[name]
            if time.monotonic() > deadline:
                raise AssertionError(f"not up after {timeout:.0f} s: {sorted(waiting)}")
            time.sleep(0.5)
        yield
