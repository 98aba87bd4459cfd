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
    batch_paths = {
        "input_path": str(settings.path(batch.input_dir)),
        "output_path": str(settings.path(batch.output_dir)),
    }
    return [
        training.to_deployment(name="training", tags=model_tags, parameters={"project_dir": project}),
        promote.to_deployment(name="promote", tags=model_tags, parameters={"project_dir": project}),
        batch_inference.to_deployment(
            name="batch_inference", tags=model_tags, cron=settings.params.schedules.batch_inference_cron,
            parameters={"project_dir": project, **batch_paths},
        ),
        monitor.to_deployment(name="monitor", tags=model_tags, cron=settings.params.monitoring.cron,
                              parameters={"project_dir": project}),
        retrain.to_deployment(name="retrain", tags=model_tags, triggers=[drift_trigger(name)],
                              concurrency_limit=1, parameters={"project_dir": project}),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve visionloop's Prefect deployments from this process.")
    parser.add_argument("--only", nargs="*", help="serve only these deployments (default: all)")
    only = parser.parse_args().only
    deployments = [d for d in build_deployments(Settings.load()) if not only or d.name in only]
    serve(*deployments)
