"""`visionloop serve --workers 2`: two processes on one port, one prediction log, one hot swap, exclusive leases."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from helpers.images import png
from helpers.project import copy_project
from helpers.server import serve_cli, wait_for
from helpers.traffic import unseen_images
from mlflow import MlflowClient

from visionloop.labeling.queue import LabelQueue
from visionloop.labeling.rules import LabelingRules
from visionloop.labeling.scan import enqueue_frame
from visionloop.models.registry import model_version, move_champion
from visionloop.store.predlog import PredictionLog
from visionloop.store.schema import predictions_table

REQUESTS, PER_REQUEST = 16, 3


def workers_on(url: str, version: str) -> list[dict[str, Any]] | None:
    """The two workers /health lists, once both serve ``version``."""
    workers = httpx.get(f"{url}/health", timeout=10).json()["workers"]
    return workers if len(workers) == 2 and all(w["model_version"] == version for w in workers) else None


def test_two_workers_answer_log_once_swap_together_and_lease_exclusively(trained_project: Path,
                                                                         tmp_path: Path) -> None:
    settings = copy_project(trained_project, tmp_path / "project", {"serving": {"poll_seconds": 1}})
    images, _ = unseen_images(settings)
    bodies = [[png(image) for image in images[i * PER_REQUEST:(i + 1) * PER_REQUEST]] for i in range(REQUESTS)]
    plog = PredictionLog(settings.db_url)
    before = plog.count()

    def predict(chunk: list[bytes]) -> list[str]:
        with httpx.Client(base_url=url, timeout=60) as client:  # a connection of its own: either worker takes it
            response = client.post("/predict", files=[("files", (f"{i}.png", b, "image/png"))
                                                      for i, b in enumerate(chunk)])
        assert response.status_code == 200, response.text
        return [p["prediction_id"] for p in response.json()["predictions"]]

    with serve_cli(settings.root, args=("--workers", "2")) as served:
        url = served.url
        workers = wait_for(lambda: workers_on(url, "1"), "both workers on v1", timeout=120, interval=0.5)
        pids = {w["pid"] for w in workers}
        assert len(pids) == 2 and served.process.pid not in pids  # two processes besides the supervisor
        answered: set[int] = set()
        wait_for(lambda: answered.add(httpx.get(f"{url}/health", timeout=10).json()["pid"]) or answered == pids,
                 "an answer from each worker", timeout=60, interval=0.02)

        with ThreadPoolExecutor(8) as pool:
            ids = [i for got in pool.map(predict, bodies) for i in got]
        assert len(set(ids)) == len(ids) == REQUESTS * PER_REQUEST

        def logged() -> int:
            with plog.engine.connect() as connection:
                return connection.execute(sa.select(sa.func.count()).select_from(predictions_table)
                                          .where(predictions_table.c.id.in_(ids))).scalar_one()

        wait_for(lambda: logged() == len(ids), "every prediction logged", timeout=60, interval=0.2)

        # Leases: every prediction queued; 6 labelers asking at once (on either worker) get 6 different images.
        rules = LabelingRules.from_settings(settings.with_overrides(
            {"labeling": {"random": {"rate": 1.0, "cap_per_hour": None}}}))
        enqueue_frame(LabelQueue(plog, rules), plog.read_window())

        def next_item(session: str) -> str:
            with httpx.Client(base_url=url, timeout=30) as client:
                return client.get("/label/next", params={"session": session}).json()["item"]["prediction_id"]

        with ThreadPoolExecutor(6) as pool:
            held = list(pool.map(next_item, [f"labeler-{i}" for i in range(6)]))
        assert len(set(held)) == 6, held

        # A hot swap reaches both workers.
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        v1 = model_version(settings, "1")
        bundle = f"{client.get_run(v1.run_id).info.artifact_uri}/bundle"  # the same weights as a new version
        v2 = client.create_model_version(settings.model_name, bundle, run_id=v1.run_id).version
        move_champion(settings, str(v2))
        wait_for(lambda: workers_on(url, str(v2)), "both workers on v2", timeout=120, interval=0.5)
        assert predict(bodies[0])  # still answering after the swap
    assert plog.count() == before + len(ids) + PER_REQUEST  # each answered image logged once, nothing lost at stop
    plog.dispose()
