"""Batch inference: a folder or manifest of images → one Parquet row per image, resumable and shardable.

The job, step by step: list the inputs (``batch.inputs``), leave out the keys the output already
holds (``batch.output.done_keys``), read and preprocess the rest in batches that carry bad files as
errors (``batch.loader``), predict, and commit the rows part by part (``batch.parts``), logging them
to the prediction log when asked.

Resumable and idempotent
    A run first reads the ``path`` column of every committed part (and of a consolidated ``OUTPUT``),
    and predicts only the keys not there, so rerunning after a crash or ``kill -9`` does the rest and
    writes no duplicates; rerunning a finished job does nothing (or only the newly added inputs).
    Error rows count as done (the file was read and judged); delete the output to retry them.

Shards
    ``predict_batch(..., shard=(i, n))`` handles only shard ``i`` of ``n`` and names its parts
    ``part-s<i>of<n>-…``: shards run in parallel (threads, processes, machines sharing the output
    folder) without coordinating; a shard never consolidates — run ``consolidate`` (or the unsharded
    call, which then finds nothing left to do) after all of them.

One writer per key
    A run claims its shard (or, unsharded, the whole output) before reading the done keys and holds
    the claim until its last row is written (``batch.claims``): an overlapping run that could write the
    same keys fails with ``OutputBusy`` instead of duplicating them.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from visionloop.batch.claims import claim
from visionloop.batch.inputs import InputSource, shard_inputs
from visionloop.batch.loader import ImageFiles, PartBatches, collate_items
from visionloop.batch.output import OutputLayout, check_compatible, consolidate_claimed, done_keys, output_schema
from visionloop.batch.parts import PartWriter
from visionloop.models.bundle import ServableModel
from visionloop.params import Params
from visionloop.store.predlog import PredictionLog


@dataclass(frozen=True)
class BatchOptions:
    """How a job reads and commits: ``batch.batch_size``, ``batch.part_size``, ``batch.num_workers`` and
    the image limits ``data.min_side``, ``data.max_pixels`` (plain values, so a shard task can take them)."""

    batch_size: int  # images per forward pass
    part_size: int  # rows per committed part: the unit of resume
    num_workers: int  # DataLoader processes decoding images
    min_side: int
    max_pixels: int

    @classmethod
    def from_params(cls, params: Params) -> BatchOptions:
        """The options of params.yaml (vary them with ``Settings.with_overrides``)."""
        return cls(
            batch_size=params.batch.batch_size,
            part_size=params.batch.part_size,
            num_workers=params.batch.num_workers,
            min_side=params.data.min_side,
            max_pixels=params.data.max_pixels,
        )


@dataclass
class BatchSummary:
    """What one call did; ``skipped`` keys were already in the output."""

    output: str
    model_name: str
    model_version: str
    shard: tuple[int, int] | None
    total: int  # keys of this shard
    skipped: int
    ok: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    parts: int = 0  # parts committed by this call
    logged: int = 0  # rows written to the prediction log
    seconds: float = 0.0
    consolidated_rows: int | None = None  # rows of the final file, when this call consolidated

    @property
    def processed(self) -> int:
        return self.ok + self.errors

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "processed": self.processed, "images_per_second": round(self.images_per_second, 1)}


def predict_batch(
    model: ServableModel,
    inputs: Path | str,
    output: Path | str,
    options: BatchOptions,
    *,
    log: PredictionLog | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    items: Sequence[str] | None = None,
) -> BatchSummary:
    """Predict every input not yet in ``output`` and commit the rows part by part (module docstring).

    ``items`` are keys already listed by ``list_inputs`` (default: list ``inputs`` now); with
    ``shard=(i, n)`` only the keys of shard ``i`` are handled and nothing is consolidated.
    """
    if options.batch_size < 1 or options.part_size < 1:
        raise ValueError(f"batch_size and part_size must be at least 1, got {options.batch_size} and "
                         f"{options.part_size}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    started = time.perf_counter()
    layout = OutputLayout(Path(output))
    source = InputSource.open(inputs)
    keys = list(items) if items is not None else source.list_keys([layout.output, layout.parts_dir])
    if items is None and not keys:
        raise ValueError(f"batch input {inputs} holds no files")
    if shard is not None:
        keys = shard_inputs(keys, shard[1])[shard[0]]
    schema = output_schema(model.classes, source.has_label, source.meta_columns)
    with claim(layout.claims_dir, shard, layout.output):
        done, models, stored_schema = done_keys(layout.output)
        check_compatible(layout.output, model.name, str(model.version), schema, models, stored_schema)
        todo = [k for k in keys if k not in done]
        summary = BatchSummary(
            output=str(layout.output),
            model_name=model.name,
            model_version=str(model.version),
            shard=shard,
            total=len(keys),
            skipped=len(keys) - len(todo),
        )
        if todo:
            writer = PartWriter(layout, shard or (0, 1), schema, model, source, log)
            _run(model, source, todo, writer, summary, options, progress)
        if shard is None and layout.is_file:
            summary.consolidated_rows = consolidate_claimed(layout)
    summary.seconds = time.perf_counter() - started
    return summary


def _run(
    model: ServableModel,
    source: InputSource,
    todo: list[str],
    writer: PartWriter,
    summary: BatchSummary,
    options: BatchOptions,
    progress: bool,
) -> None:
    """Read, predict and commit ``todo``, counting into ``summary``."""
    dataset = ImageFiles(
        source,
        todo,
        model.transform,
        channels=model.channels,
        min_side=options.min_side,
        max_pixels=options.max_pixels,
        keep_images=writer.log is not None,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=PartBatches(len(todo), options.batch_size, options.part_size),
        collate_fn=collate_items,
        num_workers=options.num_workers,
    )
    codes: Counter[str] = Counter()
    label = f"shard {summary.shard[0]}/{summary.shard[1]}" if summary.shard else "predict-batch"
    # inference mode around the loader too: the tensors the eval pipeline makes skip autograd bookkeeping
    with tqdm(total=len(todo), desc=label, unit="img", disable=not progress, file=sys.stderr,
              mininterval=0.5) as bar, torch.inference_mode():
        for batch in loader:
            if batch.tensor is not None:
                predictions = model.predict_tensor(batch.tensor)
                probabilities, embeddings = predictions.probabilities, predictions.embeddings
            else:
                probabilities = embeddings = np.zeros((0, 0), np.float32)
            writer.add(batch, probabilities, embeddings)
            codes.update(code for _, code in batch.errors.values())
            summary.ok += len(batch.ok)
            summary.errors += len(batch.errors)
            if (batch.positions[-1] + 1) % options.part_size == 0 or batch.positions[-1] + 1 == len(todo):
                writer.commit()
            bar.update(len(batch.keys))
    summary.parts = writer.committed
    summary.logged = writer.logged
    summary.error_codes = dict(codes)
