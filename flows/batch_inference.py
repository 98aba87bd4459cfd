"""The batch inference flow: pin the model → list the inputs → predict the shards in parallel → consolidate.

Shards run as parallel tasks on the runner ``batch.runner`` names: ``threads`` (in this process) or
``dask`` — prefect-dask's ``DaskTaskRunner`` on a ``distributed`` cluster, the scheduler at
``batch.dask_address`` or, when that is null, a ``LocalCluster`` of ``batch.shards`` worker processes
started for the run (one thread each: the GIL is not shared). Every task argument is a plain value and
every shard writes its own parts into the shared output folder under its claim (``batch.claims``), so
either runner gives the same rows, each key exactly once; the small steps stay on the flow's threads.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from prefect import flow, tags
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.story import retitle, tell_batch
from tasks.batch import consolidate, list_inputs, predict_shard, resolve_model
from visionloop.batch.inputs import shard_inputs
from visionloop.batch.output import OutputLayout, expand_output
from visionloop.batch.predict import BatchOptions
from visionloop.config import Settings
from visionloop.models.uris import version_uri
from visionloop.params import BatchParams


@flow(name="batch_inference", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def batch_inference(
    input_path: str,
    output_path: str,
    model_uri: str | None = None,
    shards: int | None = None,
    project_dir: str | None = None,
    log_predictions: bool | None = None,
) -> dict[str, Any]:
    """Predict every image under input_path (folder or CSV manifest) into Parquet, one row per image.

    Rerunning resumes: images already in the output are skipped. ``output_path`` may contain
    ``{model}`` and ``{version}``; relative paths are relative to the project.
    """
    settings = Settings.load(project_dir)
    options = settings.params.batch
    source = str(settings.path(input_path))
    # No input (a fresh project has no data/incoming) is nothing to do: a completed run that says so, before
    # even a champion is needed.
    if not list_inputs(source, []):
        return _nothing_to_do(source)
    name, version = resolve_model(settings, model_uri)
    run_tags = [f"model:{name}", f"model_version:{name}/{version}"]
    retitle(f"batch_inference {name} v{version}: running", run_tags)  # findable by model version while it runs
    output = OutputLayout(expand_output(settings.path(output_path), name, version))
    keys = list_inputs(source, [str(output.output), str(output.parts_dir)])
    if not keys:  # the input holds only this job's own output
        return _nothing_to_do(source)
    count = max(1, min(shards or options.shards, len(keys)))
    shard_options = asdict(BatchOptions.from_params(settings.params))
    use_log = options.log_predictions if log_predictions is None else log_predictions
    with tags(*run_tags):
        with shard_runner(options, count) as runner:
            futures = [
                runner.submit(predict_shard, {
                    "items": items, "shard": (index, count), "input_path": source,
                    "output_path": str(output.output), "model_uri": version_uri(name, version),
                    "settings": settings, "options": shard_options,
                    "db_url": settings.db_url if use_log else None, "torch_threads": options.torch_threads})
                for index, items in enumerate(shard_inputs(keys, count))
            ]
            summaries = [future.result() for future in futures]
        rows = consolidate(str(output.output))
    totals = {key: sum(s[key] for s in summaries) for key in ("total", "skipped", "ok", "errors", "logged")}
    print(f"{name} v{version}: {len(keys)} inputs in {count} shard(s); {totals['ok']} ok, {totals['errors']} errors, "
          f"{totals['skipped']} already done; {rows} rows in {output.output}")
    result = {"status": "done", "model_name": name, "model_version": version, "output": str(output.output),
              "rows": rows, "shards": summaries, **totals}
    tell_batch(settings, name, version, result)
    return result


def shard_runner(options: BatchParams, shards: int) -> TaskRunner:
    """The task runner of the shards (``batch.runner``); used as a context manager, it starts and stops it.

    ``dask`` without an address starts a ``LocalCluster`` of ``shards`` single-threaded worker processes
    bound to loopback (no dashboard): processes, not threads, so the shards' Python work runs in parallel.
    """
    if options.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=shards)
    from prefect_dask import DaskTaskRunner  # only runs on Dask import distributed

    if options.dask_address:
        return DaskTaskRunner(address=options.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": shards, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


def _nothing_to_do(source: str) -> dict[str, Any]:
    """The result of a run that found no input: completed, nothing predicted."""
    message = f"nothing to do: batch input {source} does not exist or holds no images"
    print(message)
    retitle("batch_inference: nothing to do", ["outcome:nothing-to-do"])
    return {"status": "nothing_to_do", "message": message, "input": source, "rows": 0, "shards": [],
            **dict.fromkeys(("total", "skipped", "ok", "errors", "logged"), 0)}


if __name__ == "__main__":
    # python -m flows.batch_inference [INPUT [OUTPUT [MODEL_URI]]] (defaults: batch.input_dir, batch.output_dir)
    defaults = Settings.load().params.batch
    arguments = sys.argv[1:]
    batch_inference(arguments[0] if arguments else defaults.input_dir,
                    arguments[1] if len(arguments) > 1 else defaults.output_dir, *arguments[2:3])
