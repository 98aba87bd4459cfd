"""The project's deployments, served from one process or deployed to a work pool.

`python -m flows.deployments` (the embedded `visionloop up`) serves them from this process;
`python -m flows.deployments --work-pool NAME` (the team profile) creates the process work pool if
missing, deploys each from source (this code's folder, read by the pool's workers) and exits; a
`prefect worker start --pool NAME` then runs them. training, promote and canary run on demand; batch_inference
and monitor on their cron schedules from params.yaml; retrain is started by the drift alert (a
deployment trigger on the event), at most one at a time.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from flows.batch_inference import batch_inference
from flows.canary import canary
from flows.monitor import monitor
from flows.promote import promote
from flows.retrain import retrain
from flows.training import training
from visionloop.config import Settings
from visionloop.contracts import DRIFT_EVENT, model_resource_id


def drift_trigger(model_name: str) -> DeploymentEventTrigger:
    """The drift alert of this model starts a retrain with the verdict summary as its parameter."""
    return DeploymentEventTrigger(
        name=f"retrain {model_name} on drift",
        description=(f"When the monitor raises a drift alert for {model_name} that the healing policy lets through "
                     f"(event {DRIFT_EVENT}: no retrain running, cooldown over), start a retrain with the alert's "
                     "verdict as its parameter."),
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": model_resource_id(model_name)},
        parameters={
            "verdict": "{{ event.payload }}",  # a single expression keeps its type: the payload arrives as a dict
            "trigger": "drift-alert",
        },
    )


def deployment_specs(settings: Settings) -> list[tuple[Flow, dict[str, Any]]]:
    """Each deployment as its flow and the keyword arguments both ``to_deployment`` and ``deploy`` take."""
    name = settings.model_name
    model_tags = [f"model:{name}", "visionloop"]
    project = str(settings.root)
    batch = settings.params.batch
    alert = drift_trigger(name)
    batch_paths = {
        "input_path": str(settings.path(batch.input_dir)),
        "output_path": str(settings.path(batch.output_dir)),
    }
    return [
        (training, dict(
            name="training", tags=model_tags, parameters={"project_dir": project},
            description=f"On demand: import, validate and version the data, train {name}, evaluate, register "
                        "(the first good version becomes champion). The same steps as `dvc repro`.",
        )),
        (promote, dict(
            name="promote", tags=model_tags, parameters={"project_dir": project},
            description=f"On demand (and as a subflow of every retrain): the champion/challenger gate of {name} on "
                        "the frozen gate set; the challenger becomes champion only on a clear, safe win.",
        )),
        (canary, dict(
            name="canary", tags=model_tags, parameters={"project_dir": project}, concurrency_limit=1,
            description=f"On demand: the gate on {name}'s challenger, then a canary — it answers `percent` % of "
                        "/predict, watched (promotion.canary), then promoted or rolled back by itself.",
        )),
        (batch_inference, dict(
            name="batch_inference", tags=model_tags, cron=settings.params.schedules.batch_inference_cron,
            concurrency_limit=1,  # one run at a time: overlapping runs would fight over the same output
            parameters={"project_dir": project, **batch_paths},
            description=f"Nightly: predict every image under {batch.input_dir} with {name}'s champion into Parquet "
                        f"under {batch.output_dir}; no input is nothing to do.",
        )),
        (monitor, dict(
            name="monitor", tags=model_tags, cron=settings.params.monitoring.cron,
            parameters={"project_dir": project},
            description=f"On a schedule: {name}'s champion's recent traffic against its reference profile (drift) "
                        "and its labeled traffic against its test metrics; raises the alert that may start retrain.",
        )),
        (retrain, dict(
            name="retrain", tags=model_tags, triggers=[alert], concurrency_limit=1,
            parameters={"project_dir": project},
            description=f"Started by the drift alert (automation '{alert.name}'): fine-tune {name} "
                        "from the champion on the newly labeled traffic, then gate it; one at a time.",
        )),
    ]


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments to serve from one process (``prefect.serve``)."""
    return [flow.to_deployment(**spec) for flow, spec in deployment_specs(settings)]


CODE_DIR = Path(__file__).resolve().parent.parent  # holds flows/ and tasks/: the source a pool's worker loads


def deploy_to_pool(settings: Settings, pool: str, only: list[str] | None = None) -> list[str]:
    """Create the process work pool ``pool`` if missing and deploy each deployment to it from source.

    ``from_source`` with a local folder needs no image and no remote storage (checked offline with Prefect
    3.9): the worker runs each flow run as a subprocess in that folder, with the worker's environment.
    """
    asyncio.run(_ensure_process_pool(pool))
    deployed = []
    for flow, spec in deployment_specs(settings):
        if only and spec["name"] not in only:
            continue
        entrypoint = f"{Path(inspect.getsourcefile(flow.fn)).resolve().relative_to(CODE_DIR)}:{flow.fn.__name__}"
        source = Flow.from_source(source=str(CODE_DIR), entrypoint=entrypoint)
        source.deploy(work_pool_name=pool, build=False, push=False, print_next_steps=False, **spec)
        deployed.append(f"{flow.name}/{spec['name']}")
    return deployed


async def _ensure_process_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve visionloop's Prefect deployments from this process, or "
                                                 "deploy them to a process work pool.")
    parser.add_argument("--only", nargs="*", help="only these deployments (default: all)")
    parser.add_argument("--work-pool", help="deploy to this process work pool (created if missing) and exit")
    args = parser.parse_args()
    if args.work_pool:
        for name in deploy_to_pool(Settings.load(), args.work_pool, args.only):
            print(f"deployed {name} to work pool {args.work_pool}")
    else:
        serve(*[d for d in build_deployments(Settings.load()) if not args.only or d.name in args.only])
