"""Serve the project's deployments from one process: `python -m flows.deployments` (run by `visionloop up`).

training and promote run on demand; batch_inference and monitor on their cron schedules from
params.yaml; retrain is started by the drift alert (a deployment trigger on the event), at most
one at a time.
"""

from __future__ import annotations

from prefect import serve
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from flows.batch_inference import batch_inference
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


def build_deployments(settings: Settings) -> list:
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
        training.to_deployment(
            name="training", tags=model_tags, parameters={"project_dir": project},
            description=f"On demand: import, validate and version the data, train {name}, evaluate, register "
                        "(the first good version becomes champion). The same steps as `dvc repro`.",
        ),
        promote.to_deployment(
            name="promote", tags=model_tags, parameters={"project_dir": project},
            description=f"On demand (and as a subflow of every retrain): the champion/challenger gate of {name} on "
                        "the frozen gate set; the challenger becomes champion only on a clear, safe win.",
        ),
        batch_inference.to_deployment(
            name="batch_inference", tags=model_tags, cron=settings.params.schedules.batch_inference_cron,
            concurrency_limit=1,  # one run at a time: overlapping runs would fight over the same output
            parameters={"project_dir": project, **batch_paths},
            description=f"Nightly: predict every image under {batch.input_dir} with {name}'s champion into Parquet "
                        f"under {batch.output_dir}; no input is nothing to do.",
        ),
        monitor.to_deployment(
            name="monitor", tags=model_tags, cron=settings.params.monitoring.cron,
            parameters={"project_dir": project},
            description=f"On a schedule: {name}'s champion's recent traffic against its reference profile (drift) "
                        "and its labeled traffic against its test metrics; raises the alert that may start retrain.",
        ),
        retrain.to_deployment(
            name="retrain", tags=model_tags, triggers=[alert], concurrency_limit=1,
            parameters={"project_dir": project},
            description=f"Started by the drift alert (automation '{alert.name}'): fine-tune {name} "
                        "from the champion on the newly labeled traffic, then gate it; one at a time.",
        ),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve visionloop's Prefect deployments from this process.")
    parser.add_argument("--only", nargs="*", help="serve only these deployments (default: all)")
    only = parser.parse_args().only
    deployments = [d for d in build_deployments(Settings.load()) if not only or d.name in only]
    serve(*deployments)
