"""The database schema is made only by migrations: on SQLite and PostgreSQL, from empty and from the old code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from visionloop.contracts import PredictionRecord
from visionloop.healing.alerts import AlertLog
from visionloop.store import database
from visionloop.store.predlog import PredictionLog
from visionloop.store.schema import metadata, predictions_table

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: the embedded SQLite kind, and a team PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    return request.getfixturevalue("postgres_url")


def differences(url: str) -> list:
    """What ``store.schema`` declares that the database lacks or has otherwise (alembic's autogenerate)."""
    engine = database.make_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()


def record(i: int) -> PredictionRecord:
    return PredictionRecord(
        id=str(uuid.uuid4()), created_at=T0 + timedelta(seconds=i), model_name="digits", model_version="1",
        label="2", confidence=0.7, probabilities={"0": 0.1, "1": 0.2, "2": 0.7},
        features={"brightness": i / 10, "emb_0": float(i)}, image_path=None,
    )


def test_upgrade_from_empty_makes_exactly_the_declared_schema(db_url: str) -> None:
    state = database.upgrade(db_url)
    assert state.current == state.head == database.head_revision() and state.up_to_date
    assert differences(db_url) == []
    assert database.upgrade(db_url).current == state.head  # a second upgrade finds nothing to do


def test_a_sqlite_database_made_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    old = sa.create_engine(url)
    metadata.create_all(old, tables=[predictions_table])  # the old code created each table on first use
    with old.begin() as connection:
        connection.execute(predictions_table.insert().values(
            id="kept", created_at=T0, model_name="digits", model_version="1", label="3", confidence=0.9,
            probabilities="{}", features="{}", source="rest"))
    old.dispose()

    log = PredictionLog(url)  # first use upgrades the embedded database
    try:
        assert log.get("kept").label == "3" and log.count() == 1
    finally:
        log.dispose()
    engine = database.make_engine(url)
    try:
        assert database.schema_state(engine).up_to_date
    finally:
        engine.dispose()
    assert differences(url) == []  # and the tables it lacked are there


def test_a_team_database_is_never_migrated_behind_its_owners_back(postgres_url: str) -> None:
    log = PredictionLog(postgres_url)
    try:
        with pytest.raises(database.SchemaNotCurrent, match="visionloop db upgrade"):
            log.write([record(0)])
        assert "visionloop db upgrade" in log.problem()
        assert sa.inspect(log.engine).get_table_names() == []  # untouched
        with pytest.raises(database.SchemaNotCurrent):
            AlertLog(postgres_url)
    finally:
        log.dispose()


def test_the_prediction_log_writes_and_reads_on_postgresql(postgres_url: str) -> None:
    database.upgrade(postgres_url)
    log = PredictionLog(postgres_url)
    try:
        records = [record(i) for i in range(5)]
        assert log.write(records) == 5 and log.count() == 5 and log.problem() is None
        window = log.read_window(last_n=3)
        assert list(window["id"]) == [r.id for r in records[2:]]
        assert window["created_at"].tolist() == [r.created_at for r in records[2:]]  # UTC, aware
        assert window["emb_0"].tolist() == [2.0, 3.0, 4.0] and window["prob_2"].tolist() == [0.7] * 3
        assert log.add_feedback(records[1].id, "1", at=T0) and not log.add_feedback("nope", "1")
        got = log.get(records[1].id)
        assert got.feedback_label == "1" and got.feedback_at == T0 and got.probabilities["2"] == 0.7
        assert list(log.labeled()["id"]) == [records[1].id]
    finally:
        log.dispose()


@pytest.mark.timeout(120)  # without the migration lock, PostgreSQL waits forever on the other CREATE TABLE
def test_concurrent_upgrades_of_one_database_migrate_it_once(db_url: str) -> None:
    """E.g. the server and its writer process open a new database at the same moment: neither fails."""
    with ThreadPoolExecutor(4) as pool:  # each upgrade has its own engine, so its own connection
        states = list(pool.map(database.upgrade, [db_url] * 4))
    assert {state.current for state in states} == {database.head_revision()}
    assert differences(db_url) == []


def test_visionloop_db_status_and_upgrade(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'team.db'}"
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project)
    env = {**os.environ, "VISIONLOOP_DB_URL": db_url, "VISIONLOOP_STATE_DIR": str(tmp_path / "state")}
    visionloop = Path(sys.executable).parent / "visionloop"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(visionloop), "db", *args], cwd=project, env=env, capture_output=True, text=True,
                              timeout=120)

    behind = run("status")
    assert behind.returncode == 1 and "none recorded" in behind.stdout and "visionloop db upgrade" in behind.stderr
    upgraded = run("upgrade")
    head = database.head_revision()
    assert upgraded.returncode == 0 and f"upgraded from nothing to revision {head}" in upgraded.stdout
    current = run("status")
    assert current.returncode == 0 and f"at revision {head} (up to date)" in current.stdout
    assert "password" not in current.stdout
    assert differences(db_url) == []


def test_the_stream_columns_go_and_come_back_with_the_rows_kept(db_url: str) -> None:
    """Revision 0004 (predictions.stream_id, frame_ts and their index; monitor_checks.stream_id) downgrades
    and upgrades again on both backends, rows kept."""
    from dataclasses import replace

    from alembic import command

    database.upgrade(db_url)
    log = PredictionLog(db_url)
    try:
        log.write([replace(record(0), source="stream", stream_id="cam1", frame_ts=0.5), record(1)])
        assert log.read_window(stream_id="cam1")["frame_ts"].tolist() == [0.5]
    finally:
        log.dispose()
    engine = database.make_engine(db_url)
    try:
        with engine.connect() as connection, connection.begin():
            command.downgrade(database.alembic_config(connection), "0003")
        inspector = sa.inspect(engine)
        assert not {"stream_id", "frame_ts"} & {c["name"] for c in inspector.get_columns("predictions")}
        assert "stream_id" not in {c["name"] for c in inspector.get_columns("monitor_checks")}
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one() == 2
    finally:
        engine.dispose()
    assert database.upgrade(db_url).up_to_date and differences(db_url) == []
