"""Tasks of batch inference: resolve the model, list the inputs, predict one shard, consolidate."""

from __future__ import annotations

from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retry import retry_unless
from visionloop.batch import inputs, output
from visionloop.batch.model import load_model, pin_model_uri
from visionloop.batch.predict import BatchOptions, predict_batch
from visionloop.config import Settings
from visionloop.models.registry import RegistryError
from visionloop.store.predlog import PredictionLog


@task(name="resolve model version", retries=3, retry_delay_seconds=5, retry_condition_fn=retry_unless(RegistryError),
      cache_policy=NO_CACHE)
def resolve_model(settings: Settings, model_uri: str | None) -> tuple[str, str]:
    """Pin an alias to one version, so every shard loads the same model."""
    return pin_model_uri(settings, model_uri)


# A malformed manifest stays malformed: only I/O errors are worth a retry.
@task(name="list batch inputs", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless(ValueError),
      cache_policy=NO_CACHE)
def list_inputs(input_path: str, exclude: list[str]) -> list[str]:
    """The input keys in a deterministic order; none when the input does not exist or is empty."""
    return inputs.pending_inputs(input_path, exclude=exclude)


# Retrying is safe: a shard resumes from its committed parts and writes nothing twice.
@task(name="predict shard", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE,
      task_run_name="predict shard {shard[0]} of {shard[1]}")
def predict_shard(
    items: list[str],
    shard: tuple[int, int],
    input_path: str,
    output_path: str,
    model_uri: str,
    settings: Settings,
    options: dict[str, int],
    db_url: str | None = None,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """Load the model once and predict this shard's inputs into the shared output.

    ``options`` are the fields of ``BatchOptions`` (plain values travel to any task runner).
    """
    if torch_threads:
        torch.set_num_threads(torch_threads)  # process-wide: shards sharing a machine should not oversubscribe it
    model = load_model(settings, model_uri)
    prediction_log = PredictionLog(db_url) if db_url else None
    try:
        summary = predict_batch(model, input_path, output_path, BatchOptions(**options), items=items, shard=shard,
                                progress=False, log=prediction_log)
    finally:
        if prediction_log is not None:
            prediction_log.dispose()
    return summary.to_dict()


@task(name="consolidate output", cache_policy=NO_CACHE)
def consolidate(output_path: str) -> int:
    """Merge the shards' parts into the one .parquet file (a folder output stays as it is)."""
    return output.consolidate(output_path)
