"""The team profile's PostgreSQL part against real servers: our own cluster (initdb/pg_ctl in a state folder) and
a server the user names with VISIONLOOP_POSTGRES_URL; and the --profile option's validation."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers.postgres import postgres_bin_dir
from typer.testing import CliRunner

from visionloop.config import Settings


def databases(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {row[0] for row in connection.exec_driver_sql("SELECT datname FROM pg_database")}
    finally:
        engine.dispose()


@pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL binaries (initdb, pg_ctl) not found")
def test_cluster_keeps_its_port_and_databases_across_a_restart_and_stops():
    from visionloop import stack_postgres

    base = Path(tempfile.mkdtemp(prefix="visionloop-pg-"))  # as root, `postgres` must reach it
    base.chmod(0o755)
    try:
        cluster = stack_postgres.prepare(base / "postgres")
        pid = stack_postgres.start(cluster)
        assert cluster.postmaster_pid() == pid
        assert set(stack_postgres.DATABASES) <= databases(cluster.url("postgres"))
        stack_postgres.stop(cluster)
        assert cluster.postmaster_pid() is None

        again = stack_postgres.prepare(base / "postgres")  # no second initdb; the URLs handed out stay valid
        assert again.port == cluster.port
        stack_postgres.start(again)
        assert set(stack_postgres.DATABASES) <= databases(again.url("postgres"))
    finally:
        stack_postgres.stop(stack_postgres.prepare(base / "postgres"))
        shutil.rmtree(base, ignore_errors=True)


def test_a_given_postgres_server_gets_one_database_per_service(postgres_server: str, make_project, monkeypatch):
    from visionloop.stack_team import database_urls

    monkeypatch.setenv("VISIONLOOP_POSTGRES_URL", postgres_server)
    settings = Settings.load(make_project())
    urls = database_urls(settings, echo=lambda m: None)
    assert sorted(urls) == ["mlflow", "prefect", "visionloop"]
    assert {"mlflow", "prefect", "visionloop"} <= databases(postgres_server)
    for url in urls.values():
        engine = sa.create_engine(url.set(drivername="postgresql+psycopg"))
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT current_database()").scalar() == url.database
        engine.dispose()
    assert not (settings.state_dir / "postgres").exists()  # no server of our own was started


def test_a_given_url_that_is_not_postgres_is_refused(make_project, monkeypatch):
    from visionloop.stack_team import database_urls

    monkeypatch.setenv("VISIONLOOP_POSTGRES_URL", "mysql://db/x")
    with pytest.raises(ValueError, match="postgresql://"):
        database_urls(Settings.load(make_project()), echo=lambda m: None)


def test_an_unknown_profile_is_refused_with_the_allowed_ones(make_project, monkeypatch):
    from visionloop.cli.main import app

    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(make_project()))
    result = CliRunner().invoke(app, ["up", "--profile", "cluster"])
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())  # the error box may wrap the message
    assert "Invalid value for --profile" in words and "'embedded' or 'team' (got 'cluster')" in words
