"""The audit log: every champion decision is an MLflow run in the promotion experiment.

Each run carries its ``PromotionRecord`` (tags + ``promotion_record.json``), both models' metrics
and the gate's tables. Those runs *are* the history: they live wherever MLflow lives, so
``history`` works after restarts and against a remote tracking server.

An alias move and its record are two calls; a job killed between them would leave a champion with
no record. So a move goes through ``record_move``: the record is written to a pending journal
(``<state_dir>/promotion-pending-<model>.json``) before the alias moves and removed once logged, and
the next registry operation (promote, rollback, history) finishes a journal it finds.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visionloop.config import Settings
from visionloop.contracts import CHAMPION, PromotionRecord
from visionloop.models.registry import alias_version, describe_version, registry_lock
from visionloop.models.tracking import Artifact, client, experiment_id, log_run
from visionloop.monitoring.slices import OVERALL
from visionloop.promotion.diff import describe_flips
from visionloop.promotion.diff_gallery import GALLERY_FILES, new_gallery_dir, write_gallery
from visionloop.promotion.gate import GateResult

log = logging.getLogger(__name__)

KIND_TAG, KIND = "visionloop.kind", "promotion"
RECORD_TAG = "promotion_record"
RECORD_ARTIFACT = "promotion_record.json"
_MAX_TAG = 8000  # MLflow's limit on a tag value
_MAX_PARAM = 500
GATE_DECISIONS = ("initial", "promoted", "refused", "deferred")  # decisions the gate made on a candidate


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
        "mlflow.note.content": decision_note(record)[:_MAX_TAG],
        RECORD_TAG: record_json,
    }
    gate_params = settings.params.registry.gate.model_dump(mode="json")
    params = {f"gate.{k}": str(v)[:_MAX_PARAM] for k, v in gate_params.items()}
    params.update({"champion.version": str(record.from_version), "challenger.version": str(record.candidate_version)})
    metrics = {f"{role}.{k}": v for role, values in record.metrics.items() for k, v in values.items() if v is not None}
    metrics.update({f"diff.{k}": float(v) for k, v in record.flips.items()})  # the gallery's totals
    texts = {RECORD_ARTIFACT: json.dumps(record.to_dict(), indent=2)}
    if gate is not None:
        params.update({f"gate_set.{k}": str(v)[:_MAX_PARAM] for k, v in gate.gate_set.items()})
        metrics.update(_class_metrics(gate))
        texts.update(_gate_tables(gate))
    with tempfile.TemporaryDirectory(prefix="visionloop-audit-") as tmp:
        files = [(plot, None) for plot in _slice_plot(gate, record, Path(tmp))] + _gallery(settings, gate, record)
        experiment = settings.params.mlflow.promotion_experiment
        run_id = log_run(settings, experiment, run_name=decision_title(record), tags=tags, params=params,
                         metrics=metrics, files=files, texts=texts)
    if gate is not None and record.candidate_version not in (None, record.from_version):  # not the champion itself
        describe_version(settings, record.candidate_version, version_description(record))
    log.info("%s", record.reason)
    return run_id


def _gallery(settings: Settings, gate: GateResult | None, record: PromotionRecord) -> list[Artifact]:
    """The gate's prediction-diff gallery, written under the reports folder; its files, for the run's ``diff/``.

    A gallery that cannot be written (a full disk) costs the decision its pictures, never its record.
    """
    if gate is None or gate.diff is None:
        return []
    diff = replace(gate.diff, title=decision_title(record))
    try:
        folder = new_gallery_dir(settings, diff.model_a, diff.model_b)
        write_gallery(settings, diff, folder)
    except OSError as error:
        log.warning("the prediction-diff gallery of %s was not written: %s", decision_title(record), error)
        return []
    return [(folder / name, "diff") for name in GALLERY_FILES]


def decision_title(record: PromotionRecord) -> str:
    """The run's name: ``promotion v1→v2: promoted`` for a gate decision, ``rollback v2→v1`` otherwise."""
    if record.decision in GATE_DECISIONS:
        return (f"promotion {version_label(record.from_version)}→{version_label(record.candidate_version)}: "
                f"{record.decision}")
    if record.decision in ("canary", "canary_rollback"):  # the champion does not move: name the challenger
        ended = " rolled back" if record.decision == "canary_rollback" else ""
        return f"canary {version_label(record.candidate_version)}{ended} beside {version_label(record.from_version)}"
    return f"{record.decision} {version_label(record.from_version)}→{version_label(record.to_version)}"


def metric_change(record: PromotionRecord, metric: str = "macro_f1") -> str | None:
    """``+0.080 macro-F1 on the gate set (0.810 → 0.890)``; None when the champion was not measured."""
    before, after = (record.metrics.get(role, {}).get(metric) for role in ("champion", "challenger"))
    if before is None or after is None:
        return None
    label = metric.replace("_", "-").replace("f1", "F1")
    return f"{after - before:+.3f} {label} on the gate set ({before:.3f} → {after:.3f})"


def _origin(trigger: str) -> str:
    """How the candidate came to be, from the trigger (``retrain:drift-alert`` → retrained on drift alert)."""
    kind, _, why = trigger.partition(":")
    if kind == "retrain":
        return f"retrained on {why.replace('-', ' ')}" if why else "retrained"
    return f"trained ({trigger})"


def version_description(record: PromotionRecord) -> str:
    """What the registry says about a gated version: where it came from, how it compared, the decision."""
    parts = [f"v{record.candidate_version}: {_origin(record.trigger)}"]
    if change := metric_change(record):
        parts.append(f"{change} vs {version_label(record.from_version)}")
    if flips := describe_flips(record.flips):
        parts.append(flips)
    verdict = {"promoted": "promoted to champion", "initial": "first champion"}.get(record.decision, record.decision)
    reason = record.reason.removeprefix(f"{record.decision}: ")  # the gate's reasons start with the decision
    return "; ".join(parts) + f". {verdict.capitalize()}: {reason}"


def decision_note(record: PromotionRecord) -> str:
    """The run's description: the decision in one line, then the gate's reason."""
    change = "; ".join(part for part in (metric_change(record), describe_flips(record.flips)) if part)
    return f"**{decision_title(record)}** ({record.trigger}){f'; {change}' if change else ''}.\n\n{record.reason}"


def decision_run_id(settings: Settings, record: PromotionRecord) -> str | None:
    """The audit run that recorded ``record`` (the newest for its candidate and decision)."""
    experiment = experiment_id(settings, settings.params.mlflow.promotion_experiment, create=False)
    if experiment is None:
        return None
    query = (f"tags.`{KIND_TAG}` = '{KIND}' and tags.candidate_version = '{record.candidate_version}' "
             f"and tags.decision = '{record.decision}'")
    runs = client(settings).search_runs([experiment], filter_string=query, max_results=1,
                                        order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


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
    table = gate.slices if gate is not None else None
    if table is None or len(table) <= 1:  # only "overall": nothing to compare slice by slice
        return []
    return [plot_slice_comparison(table, record, folder / "slices_comparison.png")]


def plot_slice_comparison(table: pd.DataFrame, record: PromotionRecord, path: Path) -> Path:
    """Champion and challenger accuracy per slice as paired bars (``slices.compare_slices``'s table);
    regressed slices marked. Each slice gets its own row, tall enough that labels never overlap."""
    rows = table.iloc[::-1]  # first row at the top
    names = [f"{c}={s} (n={n})" if c != OVERALL else f"overall (n={n})"
             for c, s, n in zip(rows["column"], rows["slice"], rows["n"], strict=True)]
    positions = np.arange(len(rows)) * 1.0
    fig = Figure(figsize=(7.5, 1.5 + 0.38 * len(rows)))
    ax = fig.subplots()
    height = 0.38
    roles = (("champion", version_label(record.from_version), "#9aa5b1"),
             ("challenger", version_label(record.candidate_version), "#2e86de"))
    for offset, (role, label, colour) in zip((height / 2, -height / 2), roles, strict=True):
        values = rows[f"{role}_accuracy"].to_numpy(dtype=float)
        ax.barh(positions + offset, values, height=height, color=colour, label=f"{role} {label}")
        for y, value in zip(positions + offset, values, strict=True):
            ax.text(min(value, 1.0) + 0.01, y, f"{value:.2f}", va="center", fontsize=6)
    for y, regressed in zip(positions, rows["regressed"], strict=True):
        if regressed:
            ax.text(1.1, y, "regressed", va="center", fontsize=6, color="#c0392b")
    ax.set(yticks=positions, yticklabels=names, xlim=(0, 1.25), xlabel="accuracy on the gate set",
           title=f"Champion vs challenger per slice: {decision_title(record)}")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def history(settings: Settings) -> list[PromotionRecord]:
    """Every recorded alias decision for the model, newest first (read from the promotion runs)."""
    try:  # a move journaled by a job that died: record it first (skipped while another job holds the lock)
        with registry_lock(settings, timeout=0):
            finish_pending(settings)
    except TimeoutError:
        pass
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


def _journal_path(settings: Settings) -> Path:
    return settings.state_dir / f"promotion-pending-{settings.model_name}.json"


def record_move(settings: Settings, record: PromotionRecord, move: Callable[[], None],
                gate: GateResult | None = None) -> str:
    """Journal ``record``, run ``move`` (the alias change), log the record, drop the journal; under ``registry_lock``.

    Whatever kills the job after the move, the journal survives it and ``finish_pending`` logs the record.
    """
    path = _journal_path(settings)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record.to_dict()))
    os.replace(partial, path)  # whole or absent: a torn journal would lose the record it guards
    move()
    run_id = record_decision(settings, record, gate)
    path.unlink(missing_ok=True)
    return run_id


def finish_pending(settings: Settings) -> PromotionRecord | None:
    """Log the record of a move whose job died before logging it; None when nothing was pending.

    Call under ``registry_lock``. A journal whose move never happened (the champion is not its
    ``to_version``) or whose record was logged already is dropped without a second record.
    """
    path = _journal_path(settings)
    if not path.exists():
        return None
    record = PromotionRecord(**json.loads(path.read_text()))
    if alias_version(settings, CHAMPION) != record.to_version:
        log.warning("dropping a pending %s record: the champion never moved to %s",
                    record.decision, version_label(record.to_version))
        path.unlink()
        return None
    if not _already_logged(settings, record):
        record_decision(settings, record)
        log.warning("recorded a %s decision left pending by a job that stopped after moving the alias",
                    record.decision)
    path.unlink()
    return record


def _already_logged(settings: Settings, record: PromotionRecord) -> bool:
    """Whether an audit run holds ``record`` (same decision, candidate and creation time)."""
    experiment = experiment_id(settings, settings.params.mlflow.promotion_experiment, create=False)
    if experiment is None:
        return False
    query = (f"tags.`{KIND_TAG}` = '{KIND}' and tags.candidate_version = '{record.candidate_version}' "
             f"and tags.decision = '{record.decision}'")
    runs = client(settings).search_runs([experiment], filter_string=query, max_results=100)
    return any(json.loads(run.data.tags.get(RECORD_TAG, "{}")).get("created_at") == record.created_at
               for run in runs)
