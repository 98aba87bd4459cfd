"""What a user sees in each UI after a short loop, in headless Chromium with every request off the loopback refused.

Real servers on free loopback ports (a Prefect server, an MLflow server on the project's store, Evidently's UI,
``visionloop serve``); the loop runs against them: a clean check, a check of drifted traffic that starts a retrain,
the retrain (one epoch) with its gate. Then the browser: Prefect's runs list names each run by its outcome, the
artifacts of a flow run link its MLflow run, MLflow opens in its model-training view, the registry version
says what was decided, Evidently's dashboard shows the check, /label and /docs render.

Each test saves a screenshot (1280×800 viewport, downscaled, palette PNG) under its tmp dir, or into
``$VISIONLOOP_SCREENSHOTS`` when set: ``VISIONLOOP_SCREENSHOTS=docs/screenshots pytest tests/e2e/test_ui_browser.py``
made the README's pictures.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.browser import CHROMIUM
from helpers.project import copy_project
from helpers.traffic import log_traffic, unseen_images
from helpers.ui_stack import UiStack, evidently_ui, ui_stack

from visionloop.config import Settings

VIEWPORT = {"width": 1280, "height": 800}
SHOT_WIDTH = 1024  # screenshots are downscaled to this width and reduced to a 256-colour palette
SHOT_MAX_BYTES = 250_000
WAIT_MS = 60_000  # single-page apps on two loaded cores: generous waits for what must appear
# The retrain is judged by the gate, not by its strictness: one epoch of fine-tuning.
LOOP_PARAMS = {"retrain": {"epochs": 1}}
TRAINING_VIEW = "?workflowType=machine_learning"  # MLflow 3.17's model-training view, as the project links it
N_CLEAN, N_DRIFTED, N_LABELED = 60, 80, 60  # drifted images left unlabeled wait on /label

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)


@dataclass
class FlowRun:
    id: str
    name: str
    result: dict[str, Any]


@dataclass
class Loop:
    settings: Settings
    stack: UiStack
    evidently: str  # its URL: started after the checks (see helpers.ui_stack.evidently_ui)
    clean: FlowRun
    drifted: FlowRun
    retrain: FlowRun
    mlflow_runs: dict[str, tuple[str, str]]  # what → (run id, run name) in MLflow


@pytest.fixture(scope="module")
def loop(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """The session's champion v1 in its own copy, its UIs running, and a short loop run against them."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.monitor import monitor
    from flows.retrain import retrain
    from visionloop.data.corruptions import corrupt
    from visionloop.models import tracking
    from visionloop.monitoring.monitored import load_monitored

    home = tmp_path_factory.mktemp("ui-loop")
    settings = copy_project(trained_project, home / "project", LOOP_PARAMS)
    with ui_stack(settings, home) as stack, pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", stack.mlflow)  # the flows link their runs on this MLflow UI
        env.setenv("PREFECT_API_URL", stack.prefect_api)
        project = str(settings.root)
        model = load_monitored(settings).model
        images, labels = unseen_images(settings)
        with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
            log_traffic(settings, model, images[:N_CLEAN], labels[:N_CLEAN])
            clean = monitor(project_dir=project, window=N_CLEAN, alert=False, return_state=True)
            drifted_images = corrupt(images[N_CLEAN:N_CLEAN + N_DRIFTED], "new_camera", 2, seed=3)
            log_traffic(settings, model, drifted_images, labels[N_CLEAN:N_CLEAN + N_LABELED])
            drifted = monitor(project_dir=project, window=N_DRIFTED, return_state=True)
            alert = drifted.result()
            assert alert["alert_action"] == "retrain_started", alert
            # What the drift automation hands the retrain deployment (the event's payload).
            verdict = {**alert["alert"], "alert_id": alert["alert_id"], "action": alert["alert_action"]}
            healed = retrain(verdict=verdict, trigger="drift-alert", project_dir=project, return_state=True)
            runs = [_flow_run(state) for state in (clean, drifted, healed)]
        client = tracking.client(settings)
        check_id = runs[1].result["mlflow_run_id"]
        training_id = client.get_model_version(settings.model_name, runs[2].result["version"]).run_id
        mlflow_runs = {what: (run_id, client.get_run(run_id).info.run_name)
                       for what, run_id in (("check", check_id), ("challenger", training_id))}
        with evidently_ui(settings, home) as evidently:
            yield Loop(settings, stack, evidently, *runs, mlflow_runs=mlflow_runs)


def _flow_run(state: Any) -> FlowRun:
    """The flow run behind a final state, with its name as the Prefect server now holds it."""
    from prefect.client.orchestration import get_client

    assert state.is_completed(), state
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    return FlowRun(str(run.id), run.name, state.result())


@dataclass
class Offline:
    """A browser page whose requests off the loopback are refused (and remembered)."""

    page: Any
    refused: list[str]


@pytest.fixture
def offline(browser: Any, loop: Loop) -> Iterator[Offline]:
    context = browser.new_context(viewport=VIEWPORT)
    refused: list[str] = []

    def only_loopback(route: Any) -> None:
        if route.request.url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    # MLflow's assistant panel opens by itself on a first visit; a user who closed it sees the page whole.
    context.add_init_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
    yield Offline(context.new_page(), refused)
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$VISIONLOOP_SCREENSHOTS`` (to refresh the README's), else a tmp dir."""
    chosen = os.environ.get("VISIONLOOP_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Any, path: Path) -> Path:
    """The viewport as a small PNG: downscaled to ``SHOT_WIDTH`` and reduced to a 256-colour palette."""
    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    height = round(image.height * SHOT_WIDTH / image.width)
    small = image.resize((SHOT_WIDTH, height), Image.Resampling.LANCZOS).quantize(256)
    small.save(path, optimize=True)
    assert path.stat().st_size < SHOT_MAX_BYTES, (path, path.stat().st_size)
    return path


def scroll_to_top(locator: Any) -> None:
    """Scroll the page (or the app's scrolling container) so that ``locator`` is at the top of the viewport."""
    locator.evaluate("element => element.scrollIntoView({block: 'start'})")


def test_prefect_runs_list_names_each_run_by_its_outcome(loop: Loop, offline: Offline, shots: Path) -> None:
    name = loop.settings.model_name
    assert loop.drifted.name.startswith(f"monitor {name} v1: drift critical"), loop.drifted.name
    assert loop.drifted.name.endswith("→ retrain started"), loop.drifted.name
    assert loop.clean.name.startswith(f"monitor {name} v1: ") and loop.clean.name != loop.drifted.name
    decision = loop.retrain.result["decision"]
    assert loop.retrain.name == f"retrain v1→v{loop.retrain.result['version']}: {decision}"

    page = offline.page
    page.goto(f"{loop.stack.prefect}/runs")
    for run in (loop.clean, loop.drifted, loop.retrain):
        page.get_by_text(run.name, exact=True).first.wait_for(timeout=WAIT_MS)
    assert page.get_by_text(f"decision:{decision}", exact=True).count() >= 1  # the retrain's tag in the list
    assert page.get_by_text("severity:critical", exact=True).count() == 1
    scroll_to_top(page.get_by_text("Hide subflows").first)
    screenshot(page, shots / "prefect-runs.png")
    assert offline.refused == []


def test_flow_run_artifacts_link_the_mlflow_runs(loop: Loop, offline: Offline, shots: Path) -> None:
    page, mlflow = offline.page, re.escape(loop.stack.mlflow)
    for run, card, what in ((loop.drifted, "MLflow run of the check", "check"),
                            (loop.retrain, "MLflow run of the challenger's training", "challenger")):
        page.goto(f"{loop.stack.prefect}/runs/flow-run/{run.id}")
        page.get_by_text(run.name, exact=True).first.wait_for(timeout=WAIT_MS)
        page.locator("li.p-tab#artifacts").click()
        page.get_by_text(card, exact=True).first.wait_for(timeout=WAIT_MS)
        if run is loop.drifted:
            page.get_by_text("MARKDOWN").first.wait_for()
            scroll_to_top(page.locator("li.p-tab#artifacts"))
            screenshot(page, shots / "prefect-flow-run.png")
        page.get_by_text(card, exact=True).first.click()  # the artifact's own page renders the link
        run_id, run_name = loop.mlflow_runs[what]
        link = page.locator(f"a[href^='{loop.stack.mlflow}/']", has_text=card).first
        link.wait_for(timeout=WAIT_MS)
        href = link.get_attribute("href")
        assert re.fullmatch(rf"{mlflow}/#/experiments/\d+/runs/{run_id}{re.escape(TRAINING_VIEW)}", href), href
        page.goto(href)  # following it opens the run in MLflow's model-training view
        page.get_by_text(run_name, exact=True).first.wait_for(timeout=WAIT_MS)
        page.get_by_text("Model registry", exact=True).first.wait_for(timeout=WAIT_MS)  # training-view navigation
        assert page.get_by_text("AI Gateway").count() == 0  # the GenAI view's navigation
    assert offline.refused == []


def test_mlflow_experiment_opens_in_the_training_view(loop: Loop, offline: Offline, shots: Path) -> None:
    from visionloop.models import tracking

    page = offline.page
    experiment = tracking.experiment_id(loop.settings, loop.settings.params.mlflow.experiment, create=False)
    page.goto(f"{loop.stack.mlflow}/#/experiments/{experiment}{TRAINING_VIEW}")
    for run_name in ("train v1", loop.mlflow_runs["challenger"][1]):
        page.get_by_text(run_name, exact=True).first.wait_for(timeout=WAIT_MS)
    assert page.get_by_text("Run Name", exact=True).count() >= 1  # the training runs' table ...
    assert page.get_by_text("Token Usage").count() == 0  # ... not the GenAI overview of traces
    assert "/runs" in page.url, page.url
    screenshot(page, shots / "mlflow-experiment.png")

    version = loop.retrain.result["version"]
    page.goto(f"{loop.stack.mlflow}/#/models/{loop.settings.model_name}/versions/{version}{TRAINING_VIEW}")
    page.get_by_text(f"Version {version}", exact=True).first.wait_for(timeout=WAIT_MS)
    page.get_by_text(f"v{version}: retrained on drift alert", exact=False).first.wait_for(timeout=WAIT_MS)
    assert page.get_by_text(loop.mlflow_runs["challenger"][1], exact=True).count() >= 1  # its source run
    screenshot(page, shots / "mlflow-model-version.png")
    assert offline.refused == []


def test_evidently_dashboard_shows_the_checks(loop: Loop, offline: Offline, shots: Path) -> None:
    page = offline.page
    page.goto(loop.evidently)
    page.get_by_text(loop.settings.model_name, exact=True).first.click(timeout=WAIT_MS)
    page.get_by_text("Severity of each check", exact=False).first.wait_for(timeout=WAIT_MS)
    page.get_by_text("Top features", exact=False).first.wait_for(timeout=WAIT_MS)
    screenshot(page, shots / "evidently-dashboard.png")
    assert offline.refused == []


def test_label_and_docs_pages_render_offline(loop: Loop, offline: Offline, shots: Path) -> None:
    page = offline.page
    page.goto(f"{loop.stack.serve}/label")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=WAIT_MS)
    page.wait_for_function("document.getElementById('image').naturalWidth > 0", timeout=WAIT_MS)
    assert page.locator("#guesses li").count() > 0
    assert int(page.text_content("#p-queued")) > 0  # the drifted images left unlabeled
    screenshot(page, shots / "label.png")

    page.goto(f"{loop.stack.serve}/docs")
    page.wait_for_selector("body[data-state=ready]", timeout=WAIT_MS)
    for path, method in (("/predict", "post"), ("/feedback", "post"), ("/label/next", "get")):
        assert page.locator(f"details.op[data-path='{path}'][data-method={method}]").count() == 1, path
    screenshot(page, shots / "docs.png")
    assert offline.refused == []
