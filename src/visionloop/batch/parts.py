"""One part of a batch output being filled: its rows, its prediction-log records, its commit.

Each ``ok`` row is also written to the prediction log when one is given (``source="batch"``, drift
features from ``store.records.build_records``, ``image_path`` = the input file). Its id is derived
from the model version, the output and the key, and ids already in the log are skipped: a rerun
logs nothing twice. The log is written before a part is committed, so a crash between the two is
repaired by the rerun.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from visionloop.batch.inputs import InputSource
from visionloop.batch.loader import Batch
from visionloop.batch.output import ERROR, OK, TRUE_LABEL, OutputLayout, shard_tag
from visionloop.models.bundle import ServableModel
from visionloop.monitoring.features import PROBABILITY_PREFIX
from visionloop.store.predlog import PredictionLog
from visionloop.store.records import PendingPredictions, build_records
from visionloop.store.schema import predictions_table

_ID_NAMESPACE = uuid.UUID("6f1c1a52-7f0e-4d4b-9a8e-5b7f0c1d2e3f")
_IN_QUERY = 500  # ids per "already logged?" query (SQLite's variable limit)


class PartWriter:
    """Accumulates the rows of one part and commits it (log first, then the atomic rename)."""

    def __init__(
        self,
        layout: OutputLayout,
        shard: tuple[int, int],
        schema: pa.Schema,
        model: ServableModel,
        source: InputSource,
        log: PredictionLog | None,
    ) -> None:
        self.layout = layout
        self.tag = shard_tag(shard)
        self.schema = schema
        self.model = model
        self.source = source
        self.log = log
        self.sequence = layout.next_sequence(self.tag)
        layout.clear_uncommitted(self.tag)  # left by an interrupted run of this shard
        self.id_prefix = f"batch:{model.name}:{model.version}:{layout.output.resolve()}:"
        self.committed = 0
        self.logged = 0
        self._reset()

    def _reset(self) -> None:
        self.keys: list[str] = []
        self.probabilities: list[np.ndarray] = []  # one N×C array per batch, NaN rows for errors
        self.errors: list[str | None] = []
        self.codes: list[str | None] = []
        self.pending: list[tuple[list[str], list[np.ndarray], np.ndarray, np.ndarray]] = []

    def add(self, batch: Batch, probabilities: np.ndarray, embeddings: np.ndarray) -> None:
        """Take one batch's predictions (rows of its readable items) and its errors."""
        full = np.full((len(batch.keys), len(self.model.classes)), np.nan, dtype=np.float32)
        if batch.ok:
            full[batch.ok] = probabilities
        self.keys += batch.keys
        self.probabilities.append(full)
        for i in range(len(batch.keys)):
            reason, code = batch.errors.get(i, (None, None))
            self.errors.append(reason)
            self.codes.append(code)
        if self.log is not None and batch.ok:
            self.pending.append(([batch.keys[i] for i in batch.ok], batch.images, probabilities, embeddings))

    def commit(self) -> None:
        """Log the part's predictions, then commit it as the next part of this shard."""
        if not self.keys:
            return
        if self.log is not None:
            self.logged += self._log(self.log)
        self.layout.commit_part(self.tag, self.sequence, self._table())
        self.sequence += 1
        self.committed += 1
        self._reset()

    def _table(self) -> pa.Table:
        probabilities = np.concatenate(self.probabilities)
        error = np.isnan(probabilities).any(axis=1)
        filled = np.nan_to_num(probabilities, nan=0.0)
        classes = np.asarray(self.model.classes, dtype=object)
        n = len(self.keys)
        columns: dict[str, Any] = {
            "path": self.keys,
            "label": pa.array(np.where(error, None, classes[filled.argmax(axis=1)]), pa.string()),
            "confidence": pa.array(filled.max(axis=1), pa.float32(), mask=error),
        }
        for j, name in enumerate(self.model.classes):
            columns[f"{PROBABILITY_PREFIX}{name}"] = pa.array(filled[:, j], pa.float32(), mask=error)
        columns["status"] = pa.array(np.where(error, ERROR, OK), pa.string())
        columns["error"] = self.errors
        columns["error_code"] = self.codes
        columns["model_name"] = [self.model.name] * n
        columns["model_version"] = [str(self.model.version)] * n
        if self.source.has_label:
            columns[TRUE_LABEL] = [self.source.labels.get(k) for k in self.keys]
        for column in self.source.meta_columns:
            columns[column] = [self.source.meta.get(k, {}).get(column) for k in self.keys]
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _log(self, plog: PredictionLog) -> int:
        created_at = datetime.now(UTC)
        records = []
        for keys, images, probabilities, embeddings in self.pending:
            ids = [str(uuid.uuid5(_ID_NAMESPACE, self.id_prefix + key)) for key in keys]
            pending = PendingPredictions(
                ids=ids,
                created_at=created_at,
                model_name=self.model.name,
                model_version=str(self.model.version),
                classes=self.model.classes,
                reduction=self.model.reduction,
                images=images,
                probabilities=probabilities,
                embeddings=embeddings,
                source="batch",
            )
            records += build_records(pending, [str(Path(self.source.file(k)).resolve()) for k in keys])
        existing = _logged_ids(plog, [r.id for r in records])
        return plog.write([r for r in records if r.id not in existing])


def _logged_ids(plog: PredictionLog, ids: list[str]) -> set[str]:
    """The ids among ``ids`` that the prediction log already holds."""
    plog.ensure_schema()
    found: set[str] = set()
    with plog.engine.connect() as connection:
        for start in range(0, len(ids), _IN_QUERY):
            chunk = ids[start : start + _IN_QUERY]
            query = sa.select(predictions_table.c.id).where(predictions_table.c.id.in_(chunk))
            found.update(connection.execute(query).scalars())
    return found
