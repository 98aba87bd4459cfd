"""A throwaway PostgreSQL server for the tests that must run on a team database, not only the embedded SQLite.

``postgres_server`` (session) runs ``initdb`` and ``pg_ctl`` in a temporary folder, on a free port of
127.0.0.1 with trust authentication, and stops it at the end; ``postgres_url`` gives each test its own
empty database on it. The tests are skipped, saying why, only where the PostgreSQL binaries or the
psycopg driver are missing (CI installs the ``postgresql`` package: binaries under
/usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as root: as root, the server runs as
the ``postgres`` user (else ``nobody``).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates.append(Path("/usr/local/bin"))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)]
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A running PostgreSQL for this session; yields the URL of its ``postgres`` database (the admin one)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found on PATH, /usr/local/bin or /usr/lib/postgresql")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    user = None
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
    base = Path(tempfile.mkdtemp(prefix="visionloop-pg-"))  # short: the socket path must stay under 107 bytes
    if user is not None:
        os.chown(base, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    data, port = base / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([str(bin_dir / args[0]), *args[1:]], check=True, user=user, capture_output=True, cwd=base)

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        # -F: no fsync (a throwaway server); -k: its socket in our folder, not /var/run/postgresql.
        pg("pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
           "-o", f"-F -k {base} -h 127.0.0.1 -p {port}", "start")
    except subprocess.CalledProcessError as error:
        log = base / "server.log"
        detail = log.read_text() if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {error.stderr.decode()}{detail}") from None
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty database on the session's server for this test (dropped afterwards)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
