"""The shadow log: a challenger's answers on live traffic, one row per image, beside the champion's.

Written by the prediction-log writer (``store.writer``) from ``records.PendingShadow`` entries that shadow
scoring (``serving.shadow``) queued, so shadow rows share the log's guarantees: kept until written, spilled at
a stop and replayed. Read by ``promotion.shadow`` (``visionloop shadow report`` and the gate). Each row's
``features`` holds the challenger's embedding reduced by its own PCA (``emb_i``) and its probabilities
(``prob_<class>``): the challenger's side of a drift check against its own reference profile.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from visionloop.monitoring.features import (
    EMBEDDING_PREFIX,
    PROBABILITY_PREFIX,
    embedding_columns,
    reduce_embeddings,
)
from visionloop.store.database import ensure_schema
from visionloop.store.records import PendingShadow
from visionloop.store.schema import predictions_table, shadow_predictions_table

ROW_COLUMNS = [c.name for c in shadow_predictions_table.columns]


def shadow_rows(pending: PendingShadow) -> list[dict[str, Any]]:
    """One ``shadow_predictions`` row per image of ``pending`` (the challenger's embedding reduced here)."""
    probabilities = np.asarray(pending.probabilities, dtype=np.float64).reshape(len(pending.ids), -1)
    best = probabilities.argmax(axis=1)
    names = embedding_columns(pending.reduction)
    reduced = (
        reduce_embeddings(np.asarray(pending.embeddings).reshape(len(pending.ids), -1), pending.reduction)
        if pending.reduction is not None
        else np.zeros((len(pending.ids), 0))
    )
    rows = []
    for i, prediction_id in enumerate(pending.ids):
        features = dict(zip(names, reduced[i].tolist(), strict=True))
        features.update({f"{PROBABILITY_PREFIX}{c}": float(p) for c, p in zip(pending.challenger_classes,
                                                                               probabilities[i], strict=True)})
        rows.append({
            "id": prediction_id,
            "created_at": pending.created_at,
            "model_name": pending.model_name,
            "champion_version": str(pending.champion_version),
            "champion_label": pending.champion_labels[i],
            "champion_confidence": float(pending.champion_confidences[i]),
            "challenger_version": str(pending.challenger_version),
            "challenger_label": pending.challenger_classes[int(best[i])],
            "challenger_confidence": float(probabilities[i, best[i]]),
            "champion_ms": float(pending.champion_ms[i]),
            "challenger_ms": float(pending.challenger_ms),
            "features": json.dumps(features),
            "source": pending.source,
        })
    return rows


def write_shadow(engine: sa.Engine, rows: list[dict[str, Any]]) -> int:
    """Insert the rows in one transaction, skipping ids already stored (a replayed entry); returns how many were new."""
    if not rows:
        return 0
    ensure_schema(engine)
    ids = shadow_predictions_table.c.id
    try:
        with engine.begin() as connection:
            connection.execute(shadow_predictions_table.insert(), rows)
        return len(rows)
    except sa.exc.IntegrityError:
        pass
    with engine.begin() as connection:
        stored = set(connection.execute(sa.select(ids).where(ids.in_([row["id"] for row in rows]))).scalars())
        fresh = list({row["id"]: row for row in rows if row["id"] not in stored}.values())
        if fresh:
            connection.execute(shadow_predictions_table.insert(), fresh)
    return len(fresh)


def read_shadow(
    engine: sa.Engine, model_name: str, challenger_version: str, champion_version: str | None = None,
    last_n: int | None = None,
) -> pd.DataFrame:
    """The challenger's latest ``last_n`` shadow rows (beside ``champion_version`` if given), oldest first.

    Columns: the table's (``features`` flattened into ``emb_i`` and ``prob_<class>``), the champion row's image
    statistics and ``feedback_label`` (joined by prediction id; empty where its row is not written yet).
    """
    ensure_schema(engine)
    shadow, predictions = shadow_predictions_table, predictions_table
    query = (
        sa.select(shadow, predictions.c.features.label("champion_features"), predictions.c.feedback_label)
        .select_from(shadow.outerjoin(predictions, predictions.c.id == shadow.c.id))
        .where(shadow.c.model_name == model_name, shadow.c.challenger_version == str(challenger_version))
    )
    if champion_version is not None:
        query = query.where(shadow.c.champion_version == str(champion_version))
    query = query.order_by(shadow.c.created_at.desc(), shadow.c.id.desc())
    if last_n is not None:
        query = query.limit(int(last_n))
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    rows.reverse()
    return _flatten(rows)


def count_shadow(engine: sa.Engine, model_name: str, challenger_version: str, champion_version: str) -> int:
    """How many shadow predictions the challenger made beside this champion."""
    ensure_schema(engine)
    shadow = shadow_predictions_table
    query = sa.select(sa.func.count()).select_from(shadow).where(
        shadow.c.model_name == model_name,
        shadow.c.challenger_version == str(challenger_version),
        shadow.c.champion_version == str(champion_version),
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def count_labeled(engine: sa.Engine, model_name: str, version: str) -> int:
    """How many of ``version``'s logged predictions received a feedback label (labels exist for its traffic)."""
    ensure_schema(engine)
    query = sa.select(sa.func.count()).select_from(predictions_table).where(
        predictions_table.c.model_name == model_name,
        predictions_table.c.model_version == str(version),
        predictions_table.c.feedback_label.is_not(None),
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _flatten(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows → a frame: the champion's image statistics (its ``emb_i``/``prob_`` are the champion's, dropped) and the
    challenger's ``features``."""
    if not rows:
        return pd.DataFrame(columns=[*ROW_COLUMNS, "feedback_label"])
    flat = []
    for row in rows:
        champion = json.loads(row.pop("champion_features") or "{}")
        item = {k: v for k, v in champion.items() if not k.startswith((EMBEDDING_PREFIX, PROBABILITY_PREFIX))}
        item.update(row)
        item.update(json.loads(row["features"]))
        flat.append(item)
    frame = pd.DataFrame(flat).drop(columns=["features"])
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame
