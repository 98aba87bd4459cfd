"""The prediction log (seam 4): one row per prediction, in any SQLAlchemy database.

Written by REST serving (through ``store.writer``) and batch inference, read by monitoring
(``read_window``), labeling and retraining (``labeled``). Rows are converted and flattened by
``store.records``; the table is declared in ``store.schema`` and migrated by ``store.database``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from visionloop.contracts import PredictionRecord
from visionloop.store.database import ensure_schema, make_engine
from visionloop.store.records import flatten_rows, record_to_row, row_to_record
from visionloop.store.schema import as_utc, predictions_table


class PredictionLog:
    """Read and write the ``predictions`` table of one database (its schema is checked on first use)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def __repr__(self) -> str:
        return f"PredictionLog({self.engine.url.render_as_string(hide_password=True)!r})"

    def ensure_schema(self) -> None:
        """Bring the embedded database up to date, or check a team one is (``database.ensure_schema``).

        Retried on each use until it succeeds, so a database that comes back later is picked up.
        """
        ensure_schema(self.engine)

    def problem(self) -> str | None:
        """Why the log cannot be used now (the database does not answer, or its schema is behind), else None.

        Does not prove the database is writable.
        """
        try:
            self.ensure_schema()
            with self.engine.connect() as connection:
                connection.execute(sa.select(predictions_table.c.id).limit(1)).all()
            return None
        except Exception as error:  # noqa: BLE001 - any failure means "unavailable", and says why
            return str(error).splitlines()[0]

    def write(self, records: Iterable[PredictionRecord]) -> int:
        """Insert the records in one transaction; returns how many were new.

        Ids already stored are skipped, not refused: the serving writer replays entries it cannot know
        were written (a writer process killed before it reported, a spool replayed after a stop), and
        one such row must not cost the others of its insert. The check runs only after a conflict.
        """
        rows = [record_to_row(r) for r in records]
        if not rows:
            return 0
        self.ensure_schema()
        try:
            with self.engine.begin() as connection:
                connection.execute(predictions_table.insert(), rows)
            return len(rows)
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as connection:
            ids = predictions_table.c.id
            stored = set(connection.execute(sa.select(ids).where(ids.in_([row["id"] for row in rows]))).scalars())
            fresh = list({row["id"]: row for row in rows if row["id"] not in stored}.values())
            if fresh:
                connection.execute(predictions_table.insert(), fresh)
        return len(fresh)

    def add_feedback(self, prediction_id: str, label: str, at: datetime | None = None) -> bool:
        """Store the true label of a prediction; False when no prediction has that id."""
        self.ensure_schema()
        statement = (
            predictions_table.update()
            .where(predictions_table.c.id == prediction_id)
            .values(feedback_label=label, feedback_at=as_utc(at or datetime.now(UTC)))
        )
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount > 0

    def get(self, prediction_id: str) -> PredictionRecord | None:
        """One prediction by id, or None."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(predictions_table).where(predictions_table.c.id == prediction_id)
            ).first()
        return None if row is None else row_to_record(row._mapping)

    def count(self) -> int:
        """How many predictions are logged."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(predictions_table)).scalar_one())

    def read_window(
        self,
        last_n: int | None = None,
        since: datetime | None = None,
        model_version: str | None = None,
        stream_id: str | None = None,
    ) -> pd.DataFrame:
        """The latest ``last_n`` predictions (and/or those since ``since``; only ``stream_id``'s video frames,
        when given), oldest first, features flattened.

        Columns: ``records.BASE_COLUMNS``, then the stored features (image statistics, ``emb_i``),
        ``pred_label`` (= ``label``) and ``prob_<class>`` — the schema of the reference profile.
        """
        query = sa.select(predictions_table)
        if since is not None:
            query = query.where(predictions_table.c.created_at >= as_utc(since))
        if model_version is not None:
            query = query.where(predictions_table.c.model_version == str(model_version))
        if stream_id is not None:
            query = query.where(predictions_table.c.stream_id == stream_id)
        query = query.order_by(predictions_table.c.created_at.desc(), predictions_table.c.id.desc())
        if last_n is not None:
            query = query.limit(int(last_n))
        return self._frame(query, reverse=True)

    def labeled(self, since: datetime | None = None) -> pd.DataFrame:
        """Predictions that received a feedback label (since ``since`` by feedback time), oldest first."""
        query = sa.select(predictions_table).where(predictions_table.c.feedback_label.is_not(None))
        if since is not None:
            query = query.where(predictions_table.c.feedback_at >= as_utc(since))
        query = query.order_by(predictions_table.c.created_at, predictions_table.c.id)
        return self._frame(query, reverse=False)

    def answer_counts(self, since: datetime, versions: Iterable[str], source: str = "rest") -> pd.DataFrame:
        """Per version and label since ``since``: how many answers (``n``) and their summed confidence
        (``confidence_sum``) — one aggregate query, for comparing versions on the same traffic (the canary)."""
        table = predictions_table.c
        query = (
            sa.select(table.model_version, table.label, sa.func.count().label("n"),
                      sa.func.sum(table.confidence).label("confidence_sum"))
            .where(table.created_at >= as_utc(since), table.model_version.in_([str(v) for v in versions]),
                   table.source == source)
            .group_by(table.model_version, table.label)
        )
        self.ensure_schema()
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        return pd.DataFrame(rows, columns=["model_version", "label", "n", "confidence_sum"])

    def _frame(self, query: sa.Select, reverse: bool) -> pd.DataFrame:
        self.ensure_schema()
        with self.engine.connect() as connection:
            rows = [row._mapping for row in connection.execute(query)]
        if reverse:
            rows.reverse()
        return flatten_rows(rows)

    def dispose(self) -> None:
        """Close the engine's connections (a log used once, e.g. by a command)."""
        self.engine.dispose()
