"""A PostgreSQL server of the team profile, in the state directory, on a loopback port.

The team profile runs on one machine the databases a team keeps on a real server: one PostgreSQL cluster
(``initdb`` once into ``<state>/postgres/data``, then ``pg_ctl start`` on 127.0.0.1) with one database each for
MLflow, Prefect and visionloop's own store. Its binaries are Debian's ``postgresql`` package (on PATH, in
/usr/local/bin or /usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as root, so as root it runs as
the ``postgres`` user, which then needs to reach the state directory (every folder above it traversable).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

HOST = "127.0.0.1"
DATABASES = ("mlflow", "prefect", "visionloop")  # one per service that keeps records


def bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``; an error saying how to install them if none."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates.append(Path("/usr/local/bin"))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH, in /usr/local/bin or "
                            "/usr/lib/postgresql/<version>/bin: install them (apt-get install postgresql) or give "
                            "the team profile a postgresql:// URL")


def server_user() -> str | None:
    """The user the server runs as: None (ourselves) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    """One PostgreSQL cluster: its folder (data, log, port file) and the port it listens on."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL of one database (``driver`` psycopg for MLflow and the store, asyncpg for Prefect)."""
        return f"postgresql+{driver}://postgres@{HOST}:{self.port}/{database}"

    def postmaster_pid(self) -> int | None:
        """The running server's PID from ``postmaster.pid``, or None when it is not running."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None


def _run(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(bin_dir() / args[0]), *args[1:]], user=server_user(), cwd=cluster.folder,
                            capture_output=True, text=True)
    if result.returncode != 0:
        log = cluster.log.read_text()[-2000:] if cluster.log.exists() else ""
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
    return result


def _check_reachable_by(user: str, folder: Path) -> None:
    """Every folder above ``folder`` must let ``user`` through, or the server cannot open its data directory."""
    for parent in folder.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise PermissionError(f"PostgreSQL runs as '{user}' (we are root) and cannot enter {parent} "
                                  f"(mode {oct(mode & 0o777)}): put the state directory (VISIONLOOP_STATE_DIR) "
                                  "somewhere others may traverse, or give a postgresql:// URL")


def prepare(folder: Path) -> Cluster:
    """The cluster in ``folder``: created by ``initdb`` (trust authentication, loopback only) on first use, on the
    port it was first given (a free one), so URLs recorded elsewhere stay valid across restarts."""
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    if not port_file.exists():
        port_file.write_text(str(free_port()))
    cluster = Cluster(folder.resolve(), int(port_file.read_text()))
    if user := server_user():
        _check_reachable_by(user, cluster.folder)
        account = pwd.getpwnam(user)
        os.chown(cluster.folder, account.pw_uid, account.pw_gid)
    if not (cluster.data / "PG_VERSION").exists():
        _run(cluster, "initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync")
    return cluster


def start(cluster: Cluster) -> int:
    """Start the server (TCP on 127.0.0.1 only, no Unix socket), wait until it accepts connections, create the
    missing databases; returns the postmaster's PID."""
    if cluster.postmaster_pid() is None:
        options = f"-h {HOST} -p {cluster.port} -c unix_socket_directories=''"
        _run(cluster, "pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log), "-w", "-t", "120", "-o", options,
             "start")
    create_databases(cluster.url("postgres"))
    pid = cluster.postmaster_pid()
    if pid is None:
        raise RuntimeError(f"PostgreSQL exited after starting; see {cluster.log}")
    return pid


def stop(cluster: Cluster) -> None:
    """A fast shutdown (open sessions are ended, committed work is kept)."""
    if cluster.postmaster_pid() is not None:
        _run(cluster, "pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "-t", "60", "stop")


def create_databases(server: str | sa.URL, names: tuple[str, ...] = DATABASES) -> None:
    """Create on ``server`` (a URL of a database we may connect to) each database that does not exist yet;
    each service then creates its own tables."""
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            existing = {row[0] for row in connection.exec_driver_sql("SELECT datname FROM pg_database")}
            for name in names:
                if name not in existing:
                    connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
