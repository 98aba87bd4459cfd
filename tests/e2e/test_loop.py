"""The self-healing loop against a real `prefect server` on a free loopback port.

A drift alert emits the event, the deployment trigger starts `retrain` (created by the automation),
the challenger is fine-tuned from the champion on newly labeled production images and promoted with
the new data version in its lineage; a second alert inside the cooldown starts nothing and is
recorded; a retrain that fails leaves the champion untouched.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.project import VENV_BIN, copy_project, run
from helpers.server import stop_group, wait_for

from visionloop.config import Settings

# Over the session's trained project (champion v1, trained on half the train split): the retrain learns from all
# of the new data version.
LOOP_PARAMS = {
    "train": {"limit_train_fraction": 1.0},
    "retrain": {"epochs": 2, "cooldown_seconds": 3600},
    # The test checks the loop, not the gate's strictness: a quick v1 is noisy per class.
    "registry": {"gate": {"class_tolerance": 0.5, "slice_tolerance": 0.5}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def stop(process: subprocess.Popen) -> None:
    stop_group(process, timeout=20)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{api}/health", 90)
        yield api
    finally:
        stop(server)


@pytest.fixture(scope="module")
def project(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a champion v1 and labeled production images of a drifted camera."""
    from visionloop.contracts import PredictionRecord
    from visionloop.data.corruptions import corrupt
    from visionloop.data.images import load_image
    from visionloop.data.manifest import read_manifest
    from visionloop.store.predlog import PredictionLog
    from visionloop.store.records import save_png

    settings = copy_project(trained_project, tmp_path_factory.mktemp("loop") / "project", LOOP_PARAMS)
    root = settings.root
    manifest = read_manifest(settings.path("data/prepared"))
    pool = manifest[manifest["split"] == "val"].head(150)
    images = corrupt([load_image(p) for p in pool["abs_path"]], "new_camera", 2, seed=3)
    records = []
    for image, label in zip(images, pool["label"], strict=True):
        path = settings.state_dir / "images" / f"{uuid.uuid4()}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, path)
        records.append(PredictionRecord(
            id=path.stem, created_at=datetime.now(UTC), model_name=settings.model_name, model_version="1",
            label="0", confidence=0.5, probabilities={"0": 0.5}, features={}, image_path=str(path),
            source="test", feedback_label=str(label), feedback_at=datetime.now(UTC),
        ))
    log = PredictionLog(settings.db_url)
    log.write(records)
    for record in records:  # feedback arrives later, through the same call /feedback makes
        assert log.add_feedback(record.id, record.feedback_label)
    return root


def champion(settings: Settings) -> str | None:
    from visionloop.models.registry import alias_version

    return alias_version(settings)


def retrain_runs(api: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"]))
            )

    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(read())


def test_drift_alert_starts_retrain_by_automation_and_cooldown_suppresses_the_next(prefect_api, project):
    from visionloop.data.lineage import dvc_hash
    from visionloop.healing.alerts import SUPPRESSED_COOLDOWN, AlertLog
    from visionloop.models.registry import list_versions

    settings = Settings.load(project)
    env = {"PREFECT_API_URL": prefect_api, "VISIONLOOP_PROJECT_DIR": str(project),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with open(project / "deployments.log", "wb") as log:
        served = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "flows.deployments", "--only", "retrain"], cwd=project,
            env={**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _deployment_exists(prefect_api):
            time.sleep(1)
        first = run(["visionloop", "alert", "--severity", "warning"], project, env=env).stdout
        assert "retrain_started" in first, first

        run_ = wait_for(lambda: [r for r in retrain_runs(prefect_api) if r.state and r.state.is_final()],
                        "a finished retrain run", timeout=300, interval=2)
        assert len(run_) == 1
        assert run_[0].created_by is not None and run_[0].created_by.type == "AUTOMATION"
        assert run_[0].state.is_completed(), (run_[0].state, (project / "deployments.log").read_text()[-3000:])

        second = run(["visionloop", "alert", "--severity", "warning"], project, env=env).stdout
        assert SUPPRESSED_COOLDOWN in second, second
        time.sleep(8)  # long enough for an automation to have created a run (it takes ~2 s)
        assert len(retrain_runs(prefect_api)) == 1
        actions = AlertLog(settings.db_url).history(settings.model_name)["action"].tolist()
        assert actions == [SUPPRESSED_COOLDOWN, "retrain_started"]
    finally:
        stop(served)

    # v2 was fine-tuned from v1 on a new data version that holds the labeled production images.
    assert champion(settings) == "2"
    v2 = next(v for v in list_versions(settings) if str(v["version"]) == "2")
    lineage = v2.get("lineage") or v2.get("tags") or {}
    assert lineage["data_version"].endswith(".dir")
    snapshots = sorted((project / "data" / "snapshots").glob("*/manifest.csv"))
    assert len(snapshots) == 1
    assert lineage["data_version"] == dvc_hash(snapshots[0].parent)  # DVC's hash of the snapshot folder
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], project).stdout.splitlines()
    assert not [line for line in status if line.startswith("?? data/") or line.endswith(".dvc")], status
    assert "models:/" in lineage["base_model"] and lineage["strategy"] == "fine_tuning"
    manifest = snapshots[0].read_text()
    assert manifest.count(",production") == 150


def _deployment_exists(api: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await client.read_deployments()

    with temporary_settings({PREFECT_API_URL: api}):
        return any(d.name == "retrain" for d in asyncio.run(read()))


def test_failed_retrain_leaves_the_champion_untouched(trained_copy: Settings):
    from flows.retrain import retrain
    from visionloop.healing.alerts import AlertLog

    settings, root = trained_copy, trained_copy.root
    before = champion(settings)
    assert before == "1"
    # Break the training step only: a valid params.yaml naming an augmentation Albumentations does not have.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["augment"]["train"].append({"NoSuchTransform": {}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    state = retrain(project_dir=str(root), trigger="test", return_state=True)
    assert state.is_failed()
    assert champion(settings) == before
    alerts = AlertLog(settings.db_url).history(settings.model_name)
    assert alerts.iloc[0]["outcome"].startswith("failed")
    assert pd.notna(alerts.iloc[0]["finished_at"])
    assert Path(root / "data" / "snapshots").exists()  # the data version was made; nothing else changed
