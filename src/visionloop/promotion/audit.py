"""The audit log: every champion decision is an MLflow run in the promotion experiment.

Each run carries its ``PromotionRecord`` (tags + ``promotion_record.json``), both models' metrics
and the gate's tables. Those runs *are* the history: they live wherever MLflow lives, so
``history`` works after restarts and against a remote tracking server.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import PromotionRecord
from visionloop.models.tracking import client, experiment_id, log_run
from visionloop.monitoring.slices import plot_slices
from visionloop.promotion.gate import GateResult

log = logging.getLogger(__name__)

KIND_TAG, KIND = "visionloop.kind", "promotion"
RECORD_TAG = "promotion_record"
RECORD_ARTIFACT = "promotion_record.json"
_MAX_TAG = 8000  # MLflow's limit on a tag value
_MAX_PARAM = 500


def version_label(version: str | None) -> str:
    return f"v{version}" if version is not None else "no champion"


def record_decision(settings: Settings, record: PromotionRecord, gate: GateResult | None = None) -> str:
    """Log one decision (with the gate's findings, when a gate ran) as a run; returns the run id."""
    record_json = json.dumps(record.to_dict(), sort_keys=True)
    if len(record_json) > _MAX_TAG:  # the artifact keeps the metrics; the tag must fit
        record_json = json.dumps({**record.to_dict(), "metrics": {}}, sort_keys=True)
    tags = {
        KIND_TAG: KIND,
        "model_name": record.model_name,
        "decision": record.decision,
        "from_version": str(record.from_version),
        "to_version": str(record.to_version),
        "candidate_version": str(record.candidate_version),
        "trigger": record.trigger,
        "reason": record.reason[:_MAX_TAG],
        "mlflow.note.content": record.reason[:_MAX_TAG],
        RECORD_TAG: record_json,
    }
    gate_params = settings.params.registry.gate.model_dump(mode="json")
    params = {f"gate.{k}": str(v)[:_MAX_PARAM] for k, v in gate_params.items()}
    params.update({"champion.version": str(record.from_version), "challenger.version": str(record.candidate_version)})
    metrics = {f"{role}.{k}": v for role, values in record.metrics.items() for k, v in values.items() if v is not None}
    texts = {RECORD_ARTIFACT: json.dumps(record.to_dict(), indent=2)}
    if gate is not None:
        params.update({f"gate_set.{k}": str(v)[:_MAX_PARAM] for k, v in gate.gate_set.items()})
        metrics.update(_class_metrics(gate))
        texts.update(_gate_tables(gate))
    run_name = f"{record.decision} {version_label(record.from_version)} → {version_label(record.to_version)}"
    with tempfile.TemporaryDirectory(prefix="visionloop-audit-") as tmp:
        files = [(plot, None) for plot in _slice_plot(gate, record, Path(tmp))]
        experiment = settings.params.mlflow.promotion_experiment
        run_id = log_run(settings, experiment, run_name=run_name, tags=tags, params=params, metrics=metrics,
                         files=files, texts=texts)
    log.info("%s", record.reason)
    return run_id


def _class_metrics(gate: GateResult) -> dict[str, float]:
    """Per-class F1 of both models, side by side (the record keeps only the headline metrics)."""
    metrics: dict[str, float] = {}
    if gate.comparison is not None:
        for row in gate.comparison.itertuples():
            if row.metric.startswith("f1_class_"):
                metrics[f"champion.{row.metric}"] = row.champion
                metrics[f"challenger.{row.metric}"] = row.challenger
    return metrics


def _gate_tables(gate: GateResult) -> dict[str, str]:
    tables = {
        "comparison.csv": gate.comparison,
        "slices_comparison.csv": gate.slices,
        "challenger_slices.csv": _challenger_slices(gate),
    }
    return {name: table.to_csv(index=False) for name, table in tables.items() if table is not None}


def _challenger_slices(gate: GateResult | None) -> pd.DataFrame | None:
    """The challenger's accuracy per slice, when there are slices beyond "overall" (else nothing to show)."""
    table = gate.challenger_slices if gate is not None else None
    return table if table is not None and len(table) > 1 else None


def _slice_plot(gate: GateResult | None, record: PromotionRecord, folder: Path) -> list[Path]:
    table = _challenger_slices(gate)
    if table is None:
        return []
    title = f"Challenger v{record.candidate_version} on the gate set"
    return [plot_slices(table, folder / "challenger_slices.png", title=title)]


def history(settings: Settings) -> list[PromotionRecord]:
    """Every recorded alias decision for the model, newest first (read from the promotion runs)."""
    experiment = experiment_id(settings, settings.params.mlflow.promotion_experiment, create=False)
    if experiment is None:
        return []
    name = settings.model_name.replace("'", "\\'")
    query = f"tags.`{KIND_TAG}` = '{KIND}' and tags.model_name = '{name}'"
    mlflow_client = client(settings)
    records: list[PromotionRecord] = []
    token = None
    while True:
        page = mlflow_client.search_runs([experiment], filter_string=query, max_results=1000, page_token=token)
        records += [PromotionRecord(**json.loads(run.data.tags[RECORD_TAG])) for run in page
                    if RECORD_TAG in run.data.tags]
        token = page.token
        if not token:
            break
    records.sort(key=lambda r: r.created_at, reverse=True)
    return records


def champion_stack(records: list[PromotionRecord]) -> list[str]:
    """Replay the history (newest first in ``records``) into the line of champions, oldest first.

    A promotion (or first champion) pushes a version; a rollback pops the version it left, so
    repeated rollbacks walk back one champion at a time.
    """
    stack: list[str] = []
    for record in reversed(records):
        if record.to_version is None:
            continue
        if record.decision in ("initial", "promoted", "assigned"):
            stack.append(record.to_version)
        elif record.decision == "rollback":
            if stack and stack[-1] == record.from_version:
                stack.pop()
            if not stack or stack[-1] != record.to_version:
                stack.append(record.to_version)
    return stack
