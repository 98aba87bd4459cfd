"""The project's database: engines, and its schema kept at the newest migration by Alembic.

Every table is declared in ``store.schema`` and changes only through a migration under
``store/migrations/versions``. The embedded SQLite database (the default ``Settings.db_url``) is
upgraded on its first use in a process, and by ``visionloop up`` / ``serve``; a team database (any
other URL) is never altered behind its owners' backs: using one that is behind fails with the command
that upgrades it, ``visionloop db upgrade``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaNotCurrent(RuntimeError):
    """A team database whose schema is not the one this visionloop was written for."""


def make_engine(url: str | sa.URL) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets WAL and a busy timeout so readers and writers coexist."""
    if not is_embedded(url):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets monitoring read while the server writes.
        cursor = dbapi_connection.cursor()
        with suppress(Exception):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; no fsync per commit
        cursor.close()

    return engine


def is_embedded(url: str | sa.URL) -> bool:
    """SQLite: the database this project creates for itself, which it may migrate on its own."""
    return sa.make_url(url).get_backend_name() == "sqlite"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configured in code (no alembic.ini): the migrations shipped in this package, run on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this visionloop knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migration under {MIGRATIONS}"
    return head


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against this visionloop's migrations."""

    url: str  # password hidden
    current: str | None  # None: no migration recorded (an empty database, or one made before migrations)
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.up_to_date:
            return f"{self.url}: at revision {self.head} (up to date)"
        current = self.current or "none recorded"
        return f"{self.url}: at revision {current}, this visionloop needs {self.head}"


def schema_state(engine: Engine) -> SchemaState:
    """The revision recorded in the database beside the newest one known here."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(engine.url.render_as_string(hide_password=True), current, head_revision())


def upgrade(target: str | Engine) -> SchemaState:
    """Run every migration the database lacks (``alembic upgrade head``), in one transaction; returns the state.

    A database made before migrations (tables created on first use, no ``alembic_version``) is
    adopted: the first migration keeps the tables it finds, with their rows. Safe to run on one database
    from several processes at once: each takes the database's write lock (SQLite) or an advisory lock
    (PostgreSQL) before reading the recorded revision, so one migrates and the others find nothing to do.
    Alembic's ``context`` is module-wide, so threads of one process must not migrate two databases at
    the same moment (``ensure_schema`` serialises them).
    """
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as connection, connection.begin():
            _lock_for_migration(connection)
            command.upgrade(alembic_config(connection), "head")
        return schema_state(engine)
    finally:
        if isinstance(target, str):
            engine.dispose()


def _lock_for_migration(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # pysqlite opens no transaction for DDL by itself: take the write lock now, so that the revision
        # is read and the tables created under it, and all of it commits or none of it does.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('visionloop-migrations'))"))


def upgrade_embedded(url: str) -> None:
    """What ``visionloop up`` and ``serve`` do at start: migrate the embedded SQLite database; leave a team one."""
    if is_embedded(url):
        ensure_schema(make_engine(url))


_ready: set[str] = set()  # databases found or brought up to date by this process
_ready_lock = threading.Lock()


def ensure_schema(engine: Engine) -> None:
    """Before a process first uses a database: upgrade it if embedded, else require it to be up to date.

    Checked once per process and URL (an in-memory SQLite database once per engine: each is its own).
    """
    key = engine.url.render_as_string(hide_password=False)
    if engine.url.database in (None, "", ":memory:"):
        key = f"{key}#{id(engine)}"
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        if is_embedded(engine.url):
            upgrade(engine)
        else:
            state = schema_state(engine)
            if not state.up_to_date:
                raise SchemaNotCurrent(
                    f"the database {state.describe()}; a team database is never migrated automatically: "
                    "run `visionloop db upgrade` with VISIONLOOP_DB_URL set to it"
                )
        _ready.add(key)


def new_revision(message: str) -> Path:
    """Write the next migration from what ``store.schema`` declares beyond the newest one (for developers).

    Autogenerated against a scratch SQLite database at the newest revision; read and edit the file.
    """
    scripts = ScriptDirectory.from_config(alembic_config())
    number = f"{len(list(scripts.walk_revisions())) + 1:04d}"
    with tempfile.TemporaryDirectory(prefix="visionloop-revision-") as scratch:
        engine = make_engine(f"sqlite:///{Path(scratch) / 'scratch.db'}")
        try:
            upgrade(engine)
            with engine.connect() as connection:
                script = command.revision(alembic_config(connection), message, autogenerate=True, rev_id=number)
        finally:
            engine.dispose()
    if script is None or isinstance(script, list):
        raise CommandError("alembic wrote no single revision")
    return Path(script.path)
