"""The canary against a real `visionloop serve` under 32 concurrent clients: a rollback by itself, then a promotion.

One server and one stream of traffic for the whole story, so every transition happens under load:

1. v2 is the session champion's network with the head row of class 3 broken (it never answers 3). The offline
   gate refuses it: `visionloop promote --canary 50` starts no canary. With `--no-gate` (the canary alone
   decides) it does; 40 % of the traffic is 3s, the canary's answers drift from the champion's and it rolls
   back by itself, with a gallery listing exactly 3→x flips.
2. v3 is the champion's network unchanged (the offline gate would refuse a tie, so it too starts without it):
   its canary shows no alarm and the promotion finishes (v3 champion).

No request fails at any point: the canary start, the rollback, the finish and the champion's hot swap.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from helpers.images import png
from helpers.project import copy_project
from helpers.server import serve_cli, wait_for
from helpers.traffic import unseen_images
from mlflow import MlflowClient
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES, CANARY, CHALLENGER, CHAMPION, CanaryState
from visionloop.models.cache import version_dir
from visionloop.models.registry import aliases, canary_state, model_version
from visionloop.models.tracking import log_run
from visionloop.promotion.audit import decision_run_id, history
from visionloop.promotion.canary import start_canary, watch_canary
from visionloop.serving.canary import CANARY_ARM, canary_counters

BROKEN = "3"
CLIENTS = 32
OVERRIDES = {
    "serving": {"poll_seconds": 0.2, "shadow": {"share": 0.0}},
    "registry": {"gate": {"shadow": {"min_predictions": 0}}},  # no shadow scoring here: the gate judges at once
    "promotion": {"canary": {"window_seconds": 1.0, "max_seconds": 60, "min_predictions": 100, "check_seconds": 0.25,
                             "max_latency_ratio": 3.0}},  # 2 shared cores: answer times are noisy
}


def register_variant(settings: Settings, folder: Path, edit: Callable[[dict, int], None] | None) -> str:
    """The champion's bundle with ``edit(state_dict, index of BROKEN)`` applied, registered as the challenger."""
    champion_dir = version_dir(settings, model_version(settings, "1"))
    shutil.copytree(champion_dir / "bundle", folder / "bundle")
    if edit is not None:
        classes = json.loads((folder / BUNDLE_FILES["classes"]).read_text())
        path = folder / BUNDLE_FILES["state_dict"]
        state = torch.load(path, weights_only=True)
        edit(state, classes.index(BROKEN))
        torch.save(state, path)
    run_id = log_run(settings, run_name=folder.name, files=[(folder / "bundle", "bundle")])
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    version = str(client.create_model_version(settings.model_name, f"runs:/{run_id}/bundle", run_id=run_id).version)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    return version


def never_answer(state: dict, index: int) -> None:
    state["head.weight"][index] = 0.0
    state["head.bias"][index] = -1e4


class Traffic:
    """32 clients (half with a sticky X-Client-Key) posting one image at a time until stopped."""

    def __init__(self, url: str, bodies: list[bytes]) -> None:
        self.url, self.bodies = url, bodies
        self.answers: list[tuple[float, int, str]] = []  # (monotonic time, client, version that answered)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def count(self, version: str, since: float = 0.0) -> int:
        return sum(1 for at, _, v in list(self.answers) if v == version and at >= since)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(CLIENTS)))

    async def _client(self, i: int) -> None:
        headers = {"X-Client-Key": f"client-{i}"} if i % 2 else {}
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, headers=headers) as client:
            while not self._stop.is_set():
                body = rng.choice(self.bodies)
                try:
                    response = await client.post("/predict", files=[("files", ("x.png", body, "image/png"))])
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                self.answers.append((time.monotonic(), i, response.json()["predictions"][0]["model_version"]))


def canary_and_promotion(settings: Settings, url: str, traffic: Traffic, broken: str, tmp_path: Path) -> CanaryState:
    """Steps 1 and 2 under the running traffic; the sound canary's state."""
    # 1. Without the gate the CLI starts the canary and watches it: the broken class makes it roll back.
    result = CliRunner().invoke(app, ["promote", "--canary", "50", "--no-gate", "--json", "--trigger", "test"])
    assert result.exit_code == 0, result.output
    rolled_back = json.loads(result.stdout)
    assert rolled_back["decision"] == "canary_rollback", rolled_back
    assert "predicted classes drifted" in rolled_back["reason"] and f"class {BROKEN}:" in rolled_back["reason"]
    assert aliases(settings)[CHAMPION] == "1" and CANARY not in aliases(settings)
    assert aliases(settings)[CHALLENGER] == broken  # the challenger keeps its alias, only loses its share
    assert traffic.count(broken) >= OVERRIDES["promotion"]["canary"]["min_predictions"]

    # 2. A sound challenger (the champion's network unchanged): no alarm, the promotion finishes.
    sound = register_variant(settings, tmp_path / "sound", None)
    started = start_canary(settings, 0.5, "test", gate=False)
    assert started.state is not None and started.state.version == sound
    assert canary_state(settings) == started.state
    finished = watch_canary(settings, started.state, "test")
    assert finished is not None and finished.decision == "promoted", finished
    assert finished.to_version == sound and "promoted after a canary of 50 %" in finished.reason
    assert aliases(settings)[CHAMPION] == sound and canary_state(settings) is None
    wait_for(lambda: httpx.get(f"{url}/model").json()["version"] == sound, "the hot swap", timeout=60)
    switched = time.monotonic() + 0.5  # requests in flight at the swap are answered by the model they started on
    wait_for(lambda: traffic.count(sound, since=switched) >= 100, "the new champion answering", timeout=60)
    assert traffic.count("1", since=switched) == 0  # every request goes to the new champion
    return started.state


@pytest.mark.timeout(300)
def test_a_broken_canary_rolls_back_by_itself_and_a_sound_one_is_promoted_with_no_failed_request(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = copy_project(trained_project, tmp_path / "project", OVERRIDES)
    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(settings.root))
    broken = register_variant(settings, tmp_path / "broken", never_answer)
    images, labels = unseen_images(settings)
    threes = [png(im) for im, label in zip(images, labels, strict=True) if label == BROKEN]
    others = [png(im) for im, label in zip(images, labels, strict=True) if label != BROKEN]
    bodies = threes * max(1, round(0.4 * len(others) / (0.6 * len(threes)))) + others  # 40 % threes

    with ThreadPoolExecutor(1) as pool:  # 0. while the server starts: the offline gate refuses v2, no canary
        refusal = pool.submit(start_canary, settings, 0.5, "test")
        with serve_cli(settings.root) as server, Traffic(server.url, bodies) as traffic:
            assert refusal.result().state is None and refusal.result().record.decision == "refused"
            assert canary_state(settings) is None
            wait_for(lambda: traffic.count("1") >= 100, "traffic answered by the champion", timeout=60)
            sound = canary_and_promotion(settings, server.url, traffic, broken, tmp_path)

    assert traffic.failures == []
    assert len(traffic.answers) > 1000
    counted = canary_counters(settings.state_dir, sound)
    assert counted[CANARY_ARM].requests > 0 and counted[CANARY_ARM].failed == 0

    # Every step is in the history, newest first.
    steps = [(r.decision, r.candidate_version) for r in history(settings)][:5]
    assert steps == [("promoted", sound.version), ("canary", sound.version), ("canary_rollback", broken),
                     ("canary", broken), ("refused", broken)]

    # The rollback's gallery: the canary images the challenger answered, every flip away from the broken class.
    record = history(settings)[2]
    assert record.flips["flipped"] > 0
    folder = Path(record.reason.rsplit("Gallery of its flips: ", 1)[1])
    summary = json.loads((folder / "diff.json").read_text())
    assert summary["n_flipped"] == record.flips["flipped"]
    assert {group["before"] for group in summary["groups"]} == {BROKEN}
    assert BROKEN not in {group["after"] for group in summary["groups"]}
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    run_id = decision_run_id(settings, record)
    assert {a.path for a in client.list_artifacts(run_id, "diff")} == {"diff/diff.html", "diff/diff.png",
                                                                       "diff/diff.json"}
