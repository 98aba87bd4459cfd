"""The batch inference flow: pin the model → list the inputs → predict the shards in parallel → consolidate.

Shards run as parallel tasks on the flow's task runner (threads here). For a cluster, swap the
runner without touching the code: ``batch_inference.with_options(task_runner=DaskTaskRunner(...))``
(prefect-dask) or ``RayTaskRunner`` (prefect-ray); every task argument is a plain value and every
shard writes its own parts into the shared output folder.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from prefect import flow, tags
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.story import retitle, tell_batch
from tasks.batch import consolidate, list_inputs, predict_shard, resolve_model
from visionloop.batch.inputs import shard_inputs
from visionloop.batch.output import OutputLayout, expand_output
from visionloop.batch.predict import BatchOptions
from visionloop.config import Settings
from visionloop.models.uris import version_uri


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
        futures = [
            predict_shard.submit(quote(items), (index, count), source, str(output.output), version_uri(name, version),
                                 settings, shard_options, settings.db_url if use_log else None,
                                 options.torch_threads)
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
