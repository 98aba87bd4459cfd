"""The index page of a drift check's report folder: what the check found, and what it led to.

``index.html`` ties together what the check left in its folder — Evidently's report, the verdict, the
images behind it, the performance on feedback labels (accuracy, confusion matrix, ROC curves) — with
what followed: the alert and the retrain it caused. The facts beyond the verdict are kept beside it in
``check.json`` (``note``), so that a later step — the retrain, when it ends — adds its outcome and the
page is rendered again from the folder alone (``render_index``). Times are written for people
("2026-12-02 14:05 UTC, 3 min after the previous check"); a section with nothing yet says so.

Every address on the page is a file of the folder that exists, or an anchor of the page itself, so
``outputs.self_contained_html`` can turn it into a page that renders inside MLflow.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CHECK_FILE = "check.json"
PERFORMANCE_DIR = "performance"
PERFORMANCE_PLOTS = {"confusion_matrix.png": "confusion matrix", "roc_curves.png": "ROC curves (one vs rest)"}
HEADLINE_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "roc_auc_ovr": "ROC AUC (one vs rest)",
                  "ece": "expected calibration error"}
ALERT_ACTIONS = {"retrain_started": "a retrain was started", "suppressed_cooldown": "no retrain (cooldown)",
                 "suppressed_running": "no retrain (one is running)"}


def as_time(moment: str | datetime | None) -> datetime | None:
    """A UTC time from an ISO string or a datetime (naive ones are UTC), None when there is none."""
    if moment is None or moment == "":
        return None
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def human_time(moment: str | datetime | None) -> str:
    """``2026-12-02 14:05 UTC`` (to the minute: what a person compares), or "unknown"."""
    value = as_time(moment)
    return "unknown" if value is None else f"{value:%Y-%m-%d %H:%M} UTC"


def human_duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``2 h 5 min``, ``3 days``: a span as a person says it."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    return f"{hours // 24} days"


def note(out_dir: Path, **facts: Any) -> dict[str, Any]:
    """Add ``facts`` to the folder's ``check.json`` (later ones replace earlier ones); all facts so far."""
    path = out_dir / CHECK_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    known.update(facts)
    path.write_text(json.dumps(known, indent=2, default=str) + "\n")
    return known


def render_index(out_dir: Path) -> Path:
    """Write ``index.html`` from the folder: ``verdict.json``, ``check.json`` and the files present."""
    verdict = json.loads((out_dir / "verdict.json").read_text())
    check_path = out_dir / CHECK_FILE
    facts = json.loads(check_path.read_text()) if check_path.is_file() else {}
    esc = html.escape
    title = f"Drift check: {esc(str(verdict.get('model_name')))} v{esc(str(verdict.get('model_version')))}"
    features = verdict["features"]
    contents = [
        *(['<a href="report.html">Evidently report</a>'] if (out_dir / "report.html").is_file() else []),
        '<a href="verdict.json">verdict (JSON)</a>',
        '<a href="#images">images behind the verdict</a>',
        '<a href="#performance">performance on labels</a>',
        '<a href="#alert">alert and retrain</a>',
        '<a href="#tests">per-feature tests</a>',
    ]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #1a1a1a; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }}
tr.drifted {{ background: #fde2e0; }} .verdict {{ font-size: 1.2em; }} .none {{ color: #555; font-style: italic; }}
img {{ max-width: 100%; border: 1px solid #ccc; }} figure {{ display: inline-block; margin: 0 1em 1em 0; }}
.grid {{ overflow-x: auto; }} .grid img {{ max-width: none; }} /* at its own size: captions stay legible */
</style></head><body>
<h1>{title}</h1>
<p class="verdict"><b>drift: {"yes" if verdict["drift"] else "no"}</b> · severity <b>{esc(verdict["severity"])}</b>
· {len(verdict["drifted_features"])} of {len(features)} features drifted ({verdict["share_drifted"]:.0%})</p>
<p>{_when(verdict, facts)}</p>
<p>{_window(verdict)}; family-wise false-alarm rate alpha = {verdict["alpha"]}
(Bonferroni: each test at alpha / {len(features)}).</p>
<p>{" · ".join(contents)}</p>
{_images(out_dir)}
{_performance(out_dir, facts.get("performance"))}
{_alert(facts)}
<h2 id="tests">Per-feature tests</h2>
<table><tr><th>feature</th><th>test</th><th>statistic</th><th>p-value</th><th>threshold</th><th>drifted</th></tr>
{_feature_rows(features)}
</table>
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path


def _when(verdict: dict[str, Any], facts: dict[str, Any]) -> str:
    checked = as_time(verdict.get("created_at"))
    previous = as_time(facts.get("previous_check_at"))
    if previous is None:
        since = f"the first check of {html.escape(str(verdict.get('model_name')))}"
    else:
        since = f"{human_duration((checked - previous).total_seconds())} after the previous check" if checked else ""
    return f"Checked {human_time(checked)}" + (f", {since}" if since else "") + "."


def _window(verdict: dict[str, Any]) -> str:
    start, end = as_time(verdict.get("window_start")), as_time(verdict.get("window_end"))
    n = f"{verdict['n_current']} predictions"
    if start is None or end is None:
        return f"{n} against a reference of {verdict['n_reference']}"
    same_day = start.date() == end.date()
    until = f"{end:%H:%M} UTC" if same_day else human_time(end)
    span = human_duration((end - start).total_seconds())
    return f"{n} made {start:%Y-%m-%d %H:%M} – {until} ({span}) against a reference of {verdict['n_reference']}"


def _images(out_dir: Path) -> str:
    head = '<h2 id="images">The images behind the verdict</h2>'
    if not (out_dir / "images.png").is_file():
        return f'{head}<p class="none">No embedding features: no images to show.</p>'
    return (
        f"{head}<p>Top: the current images farthest from the reference in embedding space, each captioned with "
        "its prediction, its time and the feature that sets it farthest apart (in reference standard deviations). "
        "Bottom: a typical held-out image of the class the model predicted for each.</p>"
        '<div class="grid"><img src="images.png" '
        'alt="current images farthest from the reference beside typical reference images"></div>'
    )


def _performance(out_dir: Path, performance: dict[str, Any] | None) -> str:
    head = '<h2 id="performance">Performance on feedback labels</h2>'
    if not performance:
        return f'{head}<p class="none">No performance check ran with this drift check.</p>'
    if performance.get("status") != "checked":
        why = "no labels yet" if not performance.get("n") else "too few labels"
        message = html.escape(str(performance.get("message")))
        return f'{head}<p class="none">No performance figures yet, {why}: {message}</p>'
    metrics, baseline = performance.get("metrics", {}), performance.get("baseline", {})
    rows = "\n".join(
        f"<tr><td>{name}</td><td>{_figure(metrics.get(key))}</td><td>{_figure(baseline.get(key))}</td></tr>"
        for key, name in HEADLINE_NAMES.items()
    )
    judged = "degraded" if performance.get("degraded") else "not degraded"
    plots = "".join(
        f'<figure><img src="{PERFORMANCE_DIR}/{file}" alt="{name}"><figcaption>{name}</figcaption></figure>'
        for file, name in PERFORMANCE_PLOTS.items()
        if (out_dir / PERFORMANCE_DIR / file).is_file()
    )
    return (
        f"{head}<p>{performance.get('n')} labeled predictions: <b>{judged}</b> "
        f"(severity {html.escape(str(performance.get('severity')))}). "
        f"{html.escape(str(performance.get('message')))}</p>"
        f"<table><tr><th>metric</th><th>production</th><th>at training</th></tr>\n{rows}\n</table>{plots}"
    )


def _figure(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def _alert(facts: dict[str, Any]) -> str:
    head = '<h2 id="alert">Alert and retrain</h2>'
    alert = facts.get("alert")
    if not alert:
        return f'{head}<p class="none">{html.escape(str(facts.get("no_alert", "No alert from this check.")))}</p>'
    action = ALERT_ACTIONS.get(str(alert.get("action")), str(alert.get("action")))
    lines = [
        f"Alert <code>{html.escape(str(alert.get('alert_id')))}</code> ({html.escape(str(alert.get('severity')))}, "
        f"cause: {html.escape(str(alert.get('cause')))}) raised {human_time(alert.get('raised_at'))}: "
        f"<b>{html.escape(action)}</b> — {html.escape(str(alert.get('reason')))}."
    ]
    retrain = facts.get("retrain")
    if alert.get("action") == "retrain_started":
        if retrain:
            ended = as_time(retrain.get("finished_at"))
            raised = as_time(alert.get("raised_at"))
            took = f" after {human_duration((ended - raised).total_seconds())}" if ended and raised else ""
            outcome = html.escape(str(retrain.get("outcome")))
            lines.append(f"The retrain ended {human_time(ended)}{took}: <b>{outcome}</b>.")
        else:
            lines.append('<span class="none">The retrain has not ended yet (its outcome is added here when it '
                         "does; a copy of this page logged earlier, e.g. in MLflow, does not have it).</span>")
    return head + "".join(f"<p>{line}</p>" for line in lines)


def _feature_rows(features: list[dict[str, Any]]) -> str:
    esc = html.escape
    return "\n".join(
        f"<tr class=\"{'drifted' if f['drifted'] else ''}\"><td>{esc(f['feature'])}</td><td>{esc(f['test'])}</td>"
        f"<td>{f['statistic']:.3f}</td><td>{_p_value(f['p_value'])}</td>"
        f"<td>{f['threshold']:.3g}</td><td>{'YES' if f['drifted'] else 'no'}</td></tr>"
        for f in features
    )


def _p_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"
