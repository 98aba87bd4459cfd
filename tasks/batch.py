"""Tasks of batch inference: resolve the model, list the inputs, predict one shard, consolidate."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from visionloop.batch import job as batch


@task(name="resolve model version", retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def resolve_model(model_uri: str, tracking_uri: str) -> tuple[str, str]:
    """Pin an alias to one version, so every shard loads the same model."""
    return batch.pin_model_uri(model_uri, tracking_uri)


@task(name="list batch inputs", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def list_inputs(input_path: str, exclude: list[str]) -> list[str]:
    """The input keys in a deterministic order."""
    return batch.list_inputs(input_path, exclude=exclude)


# Retrying is safe: a shard resumes from its committed parts and writes nothing twice.
@task(name="predict shard", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE,
      task_run_name="predict shard {shard[0]} of {shard[1]}")
def predict_shard(
    items: list[str],
    shard: tuple[int, int],
    input_path: str,
    output_path: str,
    model_uri: str,
    tracking_uri: str,
    options: dict[str, Any],
    db_url: str | None = None,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """Load the model once and predict this shard's inputs into the shared output."""
    from visionloop.store.predlog import PredictionLog

    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)  # process-wide: shards sharing a machine should not oversubscribe it
    model = batch.load_model(model_uri, tracking_uri)
    prediction_log = PredictionLog(db_url) if db_url else None
    try:
        summary = batch.predict_batch(model, input_path, output_path, items=items, shard=shard, progress=False,
                                      log=prediction_log, **options)
    finally:
        if prediction_log is not None:
            prediction_log.dispose()
    return summary.to_dict()


@task(name="consolidate output", cache_policy=NO_CACHE)
def consolidate(output_path: str) -> int:
    """Merge the shards' parts into the one .parquet file (a folder output stays as it is)."""
    return batch.consolidate(output_path)
