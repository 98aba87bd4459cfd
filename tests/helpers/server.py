"""The real REST server (uvicorn in a thread, or `visionloop serve` as a process, on a free loopback port)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something true, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def serve(app: FastAPI, wait_ready: bool = True) -> Iterator[str]:
    """Run ``app`` until the block ends; yield its base URL once it is up (and ``/ready``, unless told not to)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.started, "the server to start")
        if wait_ready:
            wait_for(lambda: httpx.get(f"{url}/ready").status_code == 200, "a model to be ready", timeout=60)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextmanager
def serve_cli(project: Path, env: dict[str, str] | None = None, timeout: float = 120,
              args: tuple[str, ...] = ()) -> Iterator[ServedProcess]:
    """``visionloop serve [args]`` as its own process group in ``project`` on a free loopback port, until the block
    ends (then SIGTERM to the group, as ``visionloop down`` sends); yields once ``/ready`` answers 200."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    full_env = {**os.environ, "VISIONLOOP_PROJECT_DIR": str(project), **(env or {})}
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env.get('PATH', '')}"
    log_path = project / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(bin_dir / "visionloop"), "serve", "--port", str(port), "--log-level", "warning", *args],
            cwd=project,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = ServedProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"visionloop serve exited:\n{log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"{served.url}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "visionloop serve to be ready", timeout=timeout, interval=0.5)
        yield served
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process group of ``process`` (as ``visionloop down`` sends); SIGKILL after ``timeout`` s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class ServedProcess:
    """A running ``visionloop serve``: its base URL, process (the group leader) and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def tree_rss(self) -> int:
        """Resident memory of the server and all its children (the prediction-log writer), in bytes."""
        import psutil

        root = psutil.Process(self.process.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total
