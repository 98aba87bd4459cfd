"""`visionloop demo`: the whole lifecycle on the project's data, watched in the Prefect and MLflow UIs.

The project's data is this repository's embedded digits, or a `visionloop init` project's own images: the drift
is the project's own held-out (val and test) images through `data.corruptions`, whatever their classes and
channels, so nothing below assumes digits.

import & version data → train v1 → register & promote → serve → clean traffic → drifted traffic with
delayed feedback labels → `monitor` finds drift → the alert's automation starts `retrain` → v2 is
fine-tuned from v1 on the new labels; the gate defers it until it has shadow predictions, so the held-out
drifted traffic is served again with v2 scoring it in the shadow (its shadow report is shown) → the promote flow
judges it, it is promoted → serving hot-swaps to v2 and the accuracy on held-out drifted traffic recovers. A table
of what happened (with v2's shadow agreement) ends it.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from visionloop.config import Settings
from visionloop.models.tracking import TRAINING_VIEW_QUERY
from visionloop.stack import StackUrls
from visionloop.stack_team import CLIENT_UNSET, start

DRIFT = ("new_camera", 2)  # blur + washed-out contrast + noise: ~17 % accuracy for a clean-trained v1
FEEDBACK_SPLIT = "val"  # drifted traffic from these images gets feedback labels; the test images' stays held out


@dataclass
class Timeline:
    start: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)
    echo: Callable[[str], None] = print

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.start
        self.events.append((elapsed, message))
        self.echo(f"[{elapsed:6.1f} s] {message}")


def png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def predict_all(client, images: list[np.ndarray], batch: int = 16) -> list[dict]:
    answers = []
    for i in range(0, len(images), batch):
        response = client.post("/predict", json={"images": [png(im) for im in images[i : i + batch]]})
        response.raise_for_status()
        answers.extend(response.json()["predictions"])
    return answers


def accuracy(answers: list[dict], labels: list[str]) -> float:
    return float(np.mean([a["label"] == y for a, y in zip(answers, labels, strict=True)]))


def wait_for_version(client, version: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/model")
        if response.status_code == 200 and response.json()["version"] == version:
            return
        time.sleep(1)
    raise TimeoutError(f"serving did not switch to v{version} within {timeout:.0f} s")


def shadow_score(client, settings: Settings, champion: str, challenger: str, images: list[np.ndarray],
                 log: Timeline, timeout: float = 120) -> float | None:
    """The gate deferred ``challenger`` until it has shadow predictions (``registry.gate.shadow``): send the held-out
    drifted traffic again while the server's challenger scores it in the shadow, show the shadow report, and run
    the ``promote`` deployment, which now judges. Returns the challenger's agreement with the champion."""
    from prefect.deployments import run_deployment

    from visionloop.models.registry import model_version
    from visionloop.promotion.shadow import challenger_facts, shadow_count, shadow_report

    log(f"the gate deferred v{challenger}: it waits for shadow predictions on live traffic")
    deadline = time.monotonic() + timeout
    while client.get("/health").json()["shadow"]["challenger_version"] != challenger:
        if time.monotonic() > deadline:
            raise TimeoutError(f"serving did not load the challenger v{challenger} within {timeout:.0f} s")
        time.sleep(1)
    predict_all(client, images)  # answered by v{champion}; v{challenger} predicts the same images in the shadow
    expected, deadline = int(len(images) * settings.params.serving.shadow.share), time.monotonic() + 60
    while shadow_count(settings, champion, challenger) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    report = shadow_report(settings, champion, challenger, **challenger_facts(settings, model_version(settings,
                                                                                                   challenger)))
    log(f"shadow report (`visionloop shadow report`), the held-out drifted traffic again: {report.summary()}")
    for line in report.text().splitlines()[2:]:
        log.echo(f"    {line}")
    from visionloop.models.registry import alias_version

    if alias_version(settings) == challenger:  # the scheduled monitor run re-gated it first (`monitoring.cron`)
        log(f"the scheduled monitor run gated v{challenger} again with its shadow predictions already")
    else:
        run = run_deployment("promote/promote", timeout=300, parameters={
            "project_dir": str(settings.root), "candidate_version": challenger, "trigger": "demo:shadow-scored"})
        log(f"promote run {run.name} (the gate again, with v{challenger}'s shadow predictions): {run.state.name}")
    return report.agreement


def wait_for_automated_retrain(since, timeout: float = 600):
    """The retrain flow run the drift automation created after ``since``, once it has finished."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    async def find():
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            )
            return [r for r in runs if r.created_by and r.created_by.type == "AUTOMATION"]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = asyncio.run(find())
        finished = [r for r in runs if r.state and r.state.is_final()]
        if finished:
            return finished[0]
        time.sleep(2)
    raise TimeoutError(f"no automated retrain finished within {timeout:.0f} s")


def run_demo(settings: Settings | None = None, keep: bool = False, echo: Callable[[str], None] = print) -> list[dict]:
    """Run the lifecycle end to end against the stack of ``stack.profile`` (embedded or team); returns the summary
    rows."""
    from datetime import UTC, datetime

    settings = settings or Settings.load()
    log = Timeline(echo=echo)
    urls, locations = start(settings, echo=lambda m: log(f"stack: {m}"))
    # Everything below talks to the servers `up` started (or the ones configured), like a user would.
    os.environ.update(locations)
    for key in CLIENT_UNSET:
        os.environ.pop(key, None)
    import httpx
    from prefect.deployments import run_deployment

    from flows.training import training
    from visionloop.data.corruptions import corrupt
    from visionloop.data.images import load_image
    from visionloop.data.manifest import read_manifest

    rows: list[dict] = []
    try:
        trained = training(project_dir=str(settings.root), trigger="demo")
        v1 = trained["registration"]["version"]
        log(f"trained v{v1} on data {trained['data_version']}: test accuracy {trained['metrics']['accuracy']:.4f}, "
            f"aliases {trained['registration']['aliases']}")
        if "champion" not in trained["registration"]["aliases"]:  # a project that ran the demo before
            from visionloop.promotion.rollback import assign_champion

            record = assign_champion(settings, v1, "the demo starts its story from a freshly trained model", "demo")
            log(f"{record.reason} (undo: `visionloop rollback`)")

        client = httpx.Client(base_url=urls.serve, timeout=60)
        wait_for_version(client, v1)
        log(f"serving v{v1}")
        serving_since = log.events[-1][0]

        manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
        test = manifest[manifest["split"] == "test"]
        clean_images, clean_labels = [load_image(p) for p in test["abs_path"]], test["label"].tolist()
        v1_clean = accuracy(predict_all(client, clean_images), clean_labels)
        log(f"clean traffic: {len(clean_images)} requests, v{v1} accuracy {v1_clean:.3f}")

        # Drifted traffic: the val and test images through the new camera, interleaved. Feedback arrives for the
        # val ones; the test ones are never labeled, so v2 is judged on images it never saw in any form.
        pool = manifest[manifest["split"].isin([FEEDBACK_SPLIT, "test"])].sample(frac=1.0, random_state=7)
        drifted = corrupt([load_image(p) for p in pool["abs_path"]], *DRIFT, seed=7)
        drift_labels = pool["label"].tolist()
        with_feedback = (pool["split"] == FEEDBACK_SPLIT).to_numpy()
        answers = predict_all(client, drifted)
        for answer, label, labeled in zip(answers, drift_labels, with_feedback, strict=True):
            if labeled:
                client.post("/feedback", json={"prediction_id": answer["prediction_id"], "label": label}
                            ).raise_for_status()
        held_out = [image for image, labeled in zip(drifted, with_feedback, strict=True) if not labeled]
        held_out_labels = [label for label, labeled in zip(drift_labels, with_feedback, strict=True) if not labeled]
        v1_drift = accuracy([a for a, labeled in zip(answers, with_feedback, strict=True) if not labeled],
                            held_out_labels)
        log(f"drifted traffic ({DRIFT[0]}, severity {DRIFT[1]}): {len(drifted)} requests, feedback for "
            f"{int(with_feedback.sum())}; v{v1} accuracy on the held-out {len(held_out)}: {v1_drift:.3f}")
        rows.append({"version": v1, "clean": v1_clean, "drifted": v1_drift, "how": "training flow (demo)",
                     "serving_since": serving_since, "agreement": None})

        since = datetime.now(UTC)
        monitor_run = run_deployment("monitor/monitor", parameters={"project_dir": str(settings.root)}, timeout=300)
        log(f"monitor run {monitor_run.name}: {monitor_run.state.name}")
        retrain_run = wait_for_automated_retrain(since)
        log(f"retrain run {retrain_run.name} (created by the drift automation): {retrain_run.state.name}")
        from visionloop.models.registry import alias_version

        agreement, challenger = None, alias_version(settings, "challenger")
        if alias_version(settings) == v1 and challenger not in (None, v1):  # the gate waits for shadow predictions
            agreement = shadow_score(client, settings, v1, challenger, held_out, log)
        champion = alias_version(settings)
        if champion == v1:
            log("the gate refused the challenger; v1 stays champion (see `visionloop registry history`)")
            return rows
        wait_for_version(client, champion)
        log(f"serving v{champion}")
        serving_since = log.events[-1][0]
        v2_drift = accuracy(predict_all(client, held_out), held_out_labels)
        v2_clean = accuracy(predict_all(client, clean_images), clean_labels)
        log(f"the same traffic again: v{champion} accuracy clean {v2_clean:.3f}, held-out drifted {v2_drift:.3f}")
        from visionloop.promotion.diff_gallery import galleries

        gallery = next((g for _, g in galleries(settings) if g.model_b.endswith(f" v{champion}")), None)
        if gallery is not None:  # written by the gate decision that promoted it
            log(f"what v{champion} changed: {gallery.n_flipped} of {gallery.n_images} gate-set images flip "
                f"({gallery.fixed} fixed, {gallery.broken} broke a known label); gallery {gallery.folder}/diff.html")
        rows.append({"version": champion, "clean": v2_clean, "drifted": v2_drift, "serving_since": serving_since,
                     "how": f"drift alert → automation → retrain ({retrain_run.name})",
                     "agreement": agreement})  # with v1, on the held-out drifted traffic, before its promotion
        return rows
    finally:
        print_summary(rows, log, urls, settings, kept=keep)
        if not keep:
            from visionloop.stack import down

            down(settings, echo=lambda m: log(f"stack: {m}"))


def print_summary(rows: list[dict], log: Timeline, urls: StackUrls, settings: Settings, *, kept: bool) -> None:
    echo = log.echo
    echo("\n version | serving from | accuracy clean | accuracy drifted (held out) | shadow agreement "
         "| how it got there")
    echo(" ------- | ------------ | -------------- | --------------------------- | ---------------- | ----------------")
    for row in rows:
        agreement = "-" if row.get("agreement") is None else f"{row['agreement']:.3f}"
        echo(f" v{row['version']:<6} | {row['serving_since']:10.0f} s | {row['clean']:14.3f} | "
             f"{row['drifted']:27.3f} | {agreement:>16} | {row['how']}")
    echo(f"\nTook {time.monotonic() - log.start:.0f} s.")
    for line in stack_addresses(urls, settings, kept=kept):
        echo(line)


def stack_addresses(urls: StackUrls, settings: Settings, *, kept: bool) -> list[str]:
    """Where to look at what the demo did: the running stack's addresses with ``--keep``, else how to start it."""
    if not kept:
        return ["The stack is stopped. `visionloop up` starts it again to browse the runs, the registry and "
                "the reports; `visionloop demo --keep` leaves it running."]
    reports = settings.state_dir / "monitoring"
    return [
        "The stack is still running (`visionloop down` stops it):",
        f"  Prefect    {urls.prefect_ui}/runs  (flow runs, the retrain automation)",
        f"  MLflow     {urls.mlflow}/#/models/{settings.model_name}{TRAINING_VIEW_QUERY}  "
        f"(runs, registry '{settings.model_name}')",
        f"  Evidently  {urls.evidently}  (drift over time)",
        f"  serving    {urls.serve}/  (try the model) · {urls.serve}/docs (API) · {urls.serve}/label (labeling)",
        f"  reports    {reports}/*/index.html  (each drift check)",
    ]
