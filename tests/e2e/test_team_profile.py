"""The team profile with its real parts on free loopback ports: PostgreSQL started by initdb/pg_ctl in the state
directory, the MLflow server on it with proxied artifacts, the Prefect server on it, the deployments deployed from
source to a process work pool and a worker running them.

A tiny loop: v1 trained and registered through the MLflow server, labeled drifted traffic in the PostgreSQL
prediction log, a drift alert → the automation → retrain run by the worker → v2 gated. Then: every record in
PostgreSQL (MLflow's, Prefect's, the alerts), every artifact in the server's store and none in the project, and
``down`` stops everything, PostgreSQL included.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers.postgres import postgres_bin_dir
from helpers.project import create_project, run
from helpers.server import wait_for
from helpers.ui_stack import free_port

from visionloop.config import Settings

NEVER = "0 0 1 1 *"  # no scheduled run (monitor, batch) competes with the test for the 2 cores
# What the test proves is where things run and are kept, not accuracy: 16-pixel digits, one short epoch for v1 and
# for the retrain, and a gate that lets any challenger through (v2 must still be promoted by the worker's run).
SIXTEEN = {"Resize": {"height": 16, "width": 16}}
TEAM_PARAMS = {
    "data": {"image_size": 16},
    "augment": {"train": [SIXTEEN, {"Normalize": {"mean": [0.5], "std": [0.5], "max_pixel_value": 255.0}}],
                "eval": [SIXTEEN, {"Normalize": {"mean": [0.5], "std": [0.5], "max_pixel_value": 255.0}}]},
    "train": {"epochs": 1, "limit_train_fraction": 0.3},
    "retrain": {"strategy": "full", "epochs": 1, "cooldown_seconds": 3600},
    "monitoring": {"cron": NEVER},
    "schedules": {"batch_inference_cron": NEVER},
    "registry": {"min_quality": {"metric": "accuracy", "threshold": 0.0},
                 "gate": {"margin": -1.0, "class_tolerance": 1.0, "slice_tolerance": 1.0}},
    "stack": {"profile": "team", "work_pool": "team-test"},
}


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, str]]]:
    """A fresh project on a running team stack; yields its settings and the client variables, then stops it."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found")
    from visionloop.stack import down
    from visionloop.stack_team import up_team

    # As root PostgreSQL runs as `postgres`, which must reach the state directory: pytest's folders are private.
    base = Path(tempfile.mkdtemp(prefix="visionloop-team-"))
    base.chmod(0o755)
    overrides = {**TEAM_PARAMS, "serving": {"port": free_port()}}
    settings = Settings.load(create_project(base / "project", overrides))
    ports = {"prefect": free_port(), "mlflow": free_port(), "evidently": free_port()}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VISIONLOOP_PROJECT_DIR", str(settings.root))
        try:
            _, locations = up_team(settings, serve=False, evidently=False, ports=ports, echo=lambda m: None)
            for key, value in locations.items():
                env.setenv(key, value)
            yield settings, locations
        finally:
            down(settings, echo=lambda m: None)
            shutil.rmtree(base, ignore_errors=True)


def flow_runs(deployment: str) -> list:
    """The deployment's runs on the team stack's Prefect server. Prefect reads its settings once, at import:
    in a whole-suite run it was imported long before this stack's address was in the environment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))

    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        return asyncio.run(read())


def add_labeled_drifted_traffic(settings: Settings, count: int) -> None:
    """Production images of a drifted camera with their feedback labels, in the stack's prediction log."""
    from visionloop.contracts import PredictionRecord
    from visionloop.data.corruptions import corrupt
    from visionloop.data.images import load_image
    from visionloop.data.manifest import read_manifest
    from visionloop.store.predlog import PredictionLog
    from visionloop.store.records import save_png

    manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
    pool = manifest[manifest["split"] == "val"].head(count)
    images = corrupt([load_image(p) for p in pool["abs_path"]], "new_camera", 2, seed=3)
    records = []
    for image, label in zip(images, pool["label"], strict=True):
        path = settings.state_dir / "images" / f"{uuid.uuid4()}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, path)
        now = datetime.now(UTC)
        records.append(PredictionRecord(
            id=path.stem, created_at=now, model_name=settings.model_name, model_version="1", label="0",
            confidence=0.5, probabilities={"0": 0.5}, features={}, image_path=str(path), source="test",
            feedback_label=str(label), feedback_at=now,
        ))
    log = PredictionLog(settings.db_url)
    log.write(records)
    for record in records:
        assert log.add_feedback(record.id, record.feedback_label)


def test_team_stack_runs_the_loop_on_postgres_proxied_artifacts_and_a_worker(team):
    from visionloop.healing.alerts import AlertLog
    from visionloop.models.registry import alias_version, list_versions
    from visionloop.models.tracking import client
    from visionloop.stack import down, is_running, read_services
    from visionloop.training import pipeline

    settings, locations = team
    assert locations["VISIONLOOP_DB_URL"].startswith("postgresql+psycopg://")
    assert settings.db_url == locations["VISIONLOOP_DB_URL"] and settings.artifact_root is None
    services = read_services(settings)
    assert set(services) == {"postgres", "prefect", "mlflow", "worker"}

    # v1, trained here and registered through the MLflow server (artifacts uploaded through its proxy).
    pipeline.import_step(settings)
    pipeline.prepare_step(settings)
    pipeline.train_step(settings, trigger="test")
    pipeline.evaluate_step(settings)
    assert pipeline.register_step(settings, trigger="test")["aliases"] == ["champion"]
    add_labeled_drifted_traffic(settings, 60)

    # The drift alert → the automation → retrain, run by the pool's worker.
    alert = run(["visionloop", "alert", "--severity", "warning"], settings.root, env=locations).stdout
    assert "retrain_started" in alert, alert
    finished = wait_for(lambda: [r for r in flow_runs("retrain") if r.state and r.state.is_final()],
                        "a finished retrain run", timeout=240, interval=1)
    retrain = finished[0]
    worker_log = Path(services["worker"].log).read_text()
    assert retrain.state.is_completed(), (retrain.state, worker_log[-3000:])
    assert retrain.created_by is not None and retrain.created_by.type == "AUTOMATION"
    assert retrain.work_pool_name == settings.params.stack.work_pool
    assert retrain.infrastructure_pid  # set by the process worker that ran it (a served deployment sets none)
    assert alias_version(settings) == "2"
    assert {str(v["version"]) for v in list_versions(settings)} == {"1", "2"}

    # Every record in PostgreSQL: MLflow's registry, Prefect's runs, visionloop's alerts.
    assert AlertLog(settings.db_url).history(settings.model_name)["action"].tolist() == ["retrain_started"]
    server = sa.make_url(services["postgres"].url)
    for database, query in (("mlflow", "SELECT count(*) FROM model_versions"),
                            ("prefect", "SELECT count(*) FROM flow_run")):
        engine = sa.create_engine(server.set(database=database))
        with engine.connect() as connection:
            assert connection.exec_driver_sql(query).scalar() >= (2 if database == "mlflow" else 1)
        engine.dispose()

    # Every artifact in the server's store, reached by mlflow-artifacts: URIs; none in the project.
    mlflow = client(settings)
    for version in mlflow.search_model_versions(f"name = '{settings.model_name}'"):
        run_ = mlflow.get_run(version.run_id)
        assert run_.info.artifact_uri.startswith("mlflow-artifacts:"), run_.info.artifact_uri
    store = Path(settings.artifacts_destination)
    assert len(list(store.rglob("MLmodel"))) >= 2 or len(list(store.rglob("*.pt"))) >= 2
    assert not (settings.root / "mlruns").exists() and not (settings.root / "None").exists()
    # Nothing untracked but what .gitignore lists: the retrain's data snapshot (kept by its version's .dvc artifact
    # and the DVC remote) included.
    assert list(settings.path("data/snapshots").glob("*-retrain/manifest.csv"))
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], settings.root).stdout
    assert not [line for line in status.splitlines() if line.startswith("??")], status

    # `down` stops every process, PostgreSQL last.
    stopped = down(settings, echo=lambda m: None)
    assert stopped[-1] == "postgres" and set(stopped) == set(services)
    assert not any(is_running(service) for service in services.values())
    assert not (settings.state_dir / "postgres" / "data" / "postmaster.pid").exists()
    assert os.path.exists(settings.state_dir / "team.env")
