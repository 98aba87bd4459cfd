"""What a flow run tells in the Prefect UI: a name that says what happened, outcome tags, and artifacts.

Each flow calls one ``tell_*`` function when it knows its outcome. The run is renamed (``monitor
digits-cnn v1: drift critical``, ``retrain v1→v2: promoted``) and tagged (``outcome:…``,
``severity:…``, ``decision:…``) so a drift-free check and a critical one differ in the runs list;
its artifacts hold the verdict or before/after table and links to the HTML report, the MLflow run
and the registry version. Outside a flow run nothing is published (the library never needs this).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from visionloop.config import Settings
from visionloop.contracts import PromotionRecord
from visionloop.models.tracking import model_version_link, run_link

if TYPE_CHECKING:  # types only: importing monitoring (Evidently, ~9 s) would cost every Dask worker that
    # unpickles the batch_inference flow (flows.batch_inference imports this module)
    from visionloop.healing.alerts import AlertDecision
    from visionloop.monitoring.monitor import MonitorResult

COMPARED_METRICS = ("accuracy", "macro_f1", "roc_auc_ovr", "ece", "n")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def retitle(name: str, run_tags: Iterable[str] = ()) -> None:
    """Rename the current flow run and add ``run_tags`` to it (no-op outside a flow run)."""
    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        # The run's tags as stored now: prefect.runtime's copy is from the start and misses earlier retitles.
        current = client.read_flow_run(flow_run.id).tags
        client.update_flow_run(flow_run.id, name=name, tags=sorted({*current, *run_tags}))


def _links(links: dict[str, str | None], key: str) -> list[str]:
    """One link artifact per address (the Artifacts tab lists them), and markdown lines for the summary."""
    lines = []
    for text, url in links.items():
        if url:
            create_link_artifact(url, link_text=text, key=artifact_key(key, text), description=text)
            lines.append(f"- {text}: [{url}]({url})")
    return lines


def _markdown(title: str, facts: list[str], links: list[str], key: str) -> None:
    body = "\n".join([f"# {title}", "", *[f"- {fact}" for fact in facts], "", "## Links", *links])
    create_markdown_artifact(body, key=artifact_key(key, "summary"), description=title)


def monitor_title(result: MonitorResult, decision: AlertDecision | None) -> tuple[str, list[str]]:
    """``monitor digits-cnn v1: drift critical, performance degraded → retrain_started`` and its tags."""
    verdict = result.verdict
    if verdict is None:
        outcome, severity, state = result.status.replace("_", "-"), "none", result.status.replace("_", " ")
    elif verdict.drift:
        outcome, severity, state = "drift", verdict.severity, f"drift {verdict.severity}"
    else:
        outcome, severity, state = "no-drift", "none", "no drift"
    run_tags = [f"outcome:{outcome}", f"severity:{severity}"]
    if result.performance is not None and result.performance.degraded:
        state += ", performance degraded"
        run_tags.append("performance:degraded")
    if decision is not None:
        state += f" → {decision.action.replace('_', ' ')}"
        run_tags.append(f"alert:{decision.action}")
    return f"monitor {result.model_name} v{result.model_version}: {state}", run_tags


def tell_monitor(settings: Settings, result: MonitorResult, decision: AlertDecision | None) -> str:
    """Name, tags and artifacts of a monitor run: the verdict table, the report, the MLflow run, the version."""
    title, run_tags = monitor_title(result, decision)
    retitle(title, run_tags)
    key = artifact_key("monitor", result.model_name)
    if result.verdict is not None:
        features = sorted(result.verdict.features, key=lambda f: (not f.drifted, f.p_value if f.p_value is not None
                                                                   else 1.0))
        create_table_artifact(
            [{"feature": f.feature, "test": f.test, "statistic": round(f.statistic, 4),
              "p_value": f"{f.p_value:.2e}" if f.p_value is not None else "", "threshold": f"{f.threshold:.2e}",
              "drifted": f.drifted} for f in features],
            key=artifact_key(key, "verdict"), description=f"{title}: per-feature tests, drifted first",
        )
    report = result.files.get("index")
    links = _links({
        "drift report (HTML)": Path(report).resolve().as_uri() if report else None,
        "MLflow run of the check": run_link(settings, result.mlflow_run_id) if result.mlflow_run_id else None,
        f"registry version v{result.model_version}": model_version_link(settings, result.model_version),
    }, key)
    facts = [result.message, f"window: {result.n_window} predictions"]
    if result.verdict is not None:
        facts.append(f"drifted features: {', '.join(result.verdict.drifted_features) or 'none'} "
                     f"({result.verdict.share_drifted:.0%})")
    if result.performance is not None:
        facts.append(f"performance: {result.performance.message}")
    if decision is not None:
        facts.append(f"alert: {decision.action} ({decision.reason})")
    _markdown(title, facts, links, key)
    return title


def before_after(record: PromotionRecord) -> list[dict[str, Any]]:
    """Champion and challenger on the gate set, metric by metric (the table `make demo` prints)."""
    # promotion.audit imports Lightning (via the gate): here, not at module level, for the same Dask workers
    from visionloop.promotion.audit import version_label

    before, after = record.metrics.get("champion", {}), record.metrics.get("challenger", {})
    rows = []
    for metric in COMPARED_METRICS:
        old, new = before.get(metric), after.get(metric)
        if old is None and new is None:
            continue
        rows.append({"metric": metric,
                     f"champion {version_label(record.from_version)}": "" if old is None else round(old, 4),
                     f"challenger {version_label(record.candidate_version)}": "" if new is None else round(new, 4),
                     "change": "" if old is None or new is None else f"{new - old:+.4f}"})
    return rows


def tell_promotion(settings: Settings, record: PromotionRecord, title: str, training_run_id: str | None = None,
                   facts: Iterable[str] = ()) -> str:
    """Name, decision tag and artifacts of a run that ended in a gate decision (retrain, promote)."""
    from visionloop.promotion.audit import decision_run_id, version_label

    retitle(title, [f"decision:{record.decision}"])
    key = artifact_key(title.split(" ")[0], record.model_name)
    create_table_artifact(before_after(record), key=artifact_key(key, "before-after"),
                          description=f"{title}: champion vs challenger on the gate set")
    promotion_run = decision_run_id(settings, record)
    links = _links({
        "MLflow run of the challenger's training": run_link(settings, training_run_id) if training_run_id else None,
        "MLflow run of the promotion decision": run_link(settings, promotion_run) if promotion_run else None,
        f"registry version {version_label(record.candidate_version)}":
            model_version_link(settings, record.candidate_version) if record.candidate_version else None,
    }, key)
    _markdown(title, [*facts, f"decision: {record.decision} ({record.trigger})", record.reason], links, key)
    return title


def retrain_title(record: PromotionRecord) -> str:
    """``retrain v1→v2: promoted``."""
    from visionloop.promotion.audit import version_label

    return (f"retrain {version_label(record.from_version)}→{version_label(record.candidate_version)}: "
            f"{record.decision}")


def tell_training(settings: Settings, run_id: str, data_version: str, metrics: dict[str, float],
                  registration: dict[str, Any]) -> str:
    """Name, tags and artifacts of a training run: its test metrics, the MLflow run, the new version."""
    version, held = registration["version"], registration["aliases"]
    title = f"training {settings.model_name} v{version}: {', '.join(held) or 'registered'}"
    retitle(title, [f"version:{version}", *(f"alias:{alias}" for alias in held)])
    key = artifact_key("training", settings.model_name)
    create_table_artifact([{"metric": k, "test": round(float(v), 4)} for k, v in metrics.items()
                           if isinstance(v, int | float)],
                          key=artifact_key(key, "metrics"), description=f"{title}: test-split metrics")
    links = _links({"MLflow run of the training": run_link(settings, run_id),
                    f"registry version v{version}": model_version_link(settings, version)}, key)
    _markdown(title, [f"data version {data_version}", f"aliases: {', '.join(held) or 'none'}"], links, key)
    return title


def tell_batch(settings: Settings, name: str, version: str, result: dict[str, Any]) -> str:
    """Name and summary of a batch inference run."""
    title = f"batch_inference {name} v{version}: {result['rows']} rows, {result['errors']} errors"
    retitle(title, ["outcome:errors" if result["errors"] else "outcome:ok"])
    key = artifact_key("batch", name)
    create_table_artifact([{k: result[k] for k in ("total", "ok", "errors", "skipped", "logged", "rows")}],
                          key=artifact_key(key, "summary"), description=title)
    output = Path(result["output"])
    _links({"batch output": output.resolve().as_uri(),
            f"registry version v{version}": model_version_link(settings, version, name)}, key)
    return title
