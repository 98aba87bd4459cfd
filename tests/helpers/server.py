"""The real REST server (uvicorn in a thread, on a free loopback port) and what tests send it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

