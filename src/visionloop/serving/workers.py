"""Several serving processes on one port: how each says which model version it serves, and how they start.

``visionloop serve --workers N`` binds the port once and runs N worker processes over it (uvicorn's
supervisor restarts one that dies). Each worker is a whole server: it loads the champion, micro-batches,
follows the alias on its own (so a hot swap reaches every worker within ``serving.poll_seconds``), and
logs through its own writer into the one database (PostgreSQL, or SQLite in WAL mode with a busy timeout).
What they share lives outside the processes: the database (prediction log, labeling leases — claimed with
a conditional UPDATE, so exclusive across processes), the spool folder (each replayed file locked by the
worker replaying it, ``store.spool``) and the board below.

The board is a folder per served port under the state directory: each worker holds a lock file for its
life and writes ``<pid>-<token>.json`` (its pid and version) whenever its version changes. ``GET /health``,
answered by whichever worker the kernel handed the connection to, lists every live worker from there; the
file of a worker that died (its lock released by the kernel) is removed by the next reader.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionloop.config import Settings
from visionloop.locks import is_held, release, try_lock


def board_dir(settings: Settings) -> Path:
    """The board of the server on ``serving.port`` (servers on other ports of the same project have their own)."""
    return settings.state_dir / "serving" / f"port-{settings.params.serving.port}"


class WorkerBoard:
    """This worker's entry on the board of its port, and what every live worker has published there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # unique even for two apps in one process (tests)
        self._fd: int | None = None

    def join(self) -> None:
        """Hold this worker's lock (released by the kernel if the process dies) and publish 'no version yet'."""
        self._fd = try_lock(self.folder / f"{self.name}.lock")
        if self._fd is None:
            raise RuntimeError(f"the board entry {self.name} in {self.folder} is held by another process")
        self.publish(None)

    def publish(self, version: str | None) -> None:
        """Say which version this worker serves now (written whole: a reader never sees half a file)."""
        record = {"pid": os.getpid(), "model_version": version, "since": datetime.now(UTC).isoformat()}
        partial = self.folder / f".{self.name}.json.part"
        partial.write_text(json.dumps(record))
        os.replace(partial, self.folder / f"{self.name}.json")

    def leave(self) -> None:
        """Take this worker off the board."""
        (self.folder / f"{self.name}.json").unlink(missing_ok=True)
        if self._fd is not None:
            (self.folder / f"{self.name}.lock").unlink(missing_ok=True)
            release(self._fd)
            self._fd = None

    def members(self) -> list[dict[str, Any]]:
        """Every live worker's record, by pid; entries of dead workers are removed on the way."""
        found = []
        for path in sorted(self.folder.glob("*.json")):
            lock = path.with_suffix(".lock")
            if not is_held(lock):
                path.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)
                continue
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # removed or replaced between the listing and the read
                continue
        return sorted(found, key=lambda record: record["pid"])
