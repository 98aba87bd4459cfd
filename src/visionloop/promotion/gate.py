"""The gate's verdict: pure decisions on measured predictions, with no registry access.

Champion and challenger have predicted the same frozen gate set (``promotion.gate_set``). The
challenger passes only if it wins on ``registry.gate.metric`` by at least the margin and regresses
no class's F1 and no declared slice's accuracy beyond the tolerances (``judge``). A first champion
only has to reach ``registry.min_quality`` (``initial_gate``). ``promotion.promote`` acts on the
verdict; nothing here changes the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.models.registry import HEADLINE_METRICS
from visionloop.monitoring.slices import build_slice_frame, compare_slices, slice_metrics
from visionloop.params import GateParams
from visionloop.promotion.diff import PredictionDiff
from visionloop.training.evaluate import Evaluation

EPS = 1e-12  # "drops by more than" tolerates float noise exactly at the tolerance


@dataclass
class GateSet:
    """What both models predict: images, labels, per-image metadata and a description of the set."""

    images: list[np.ndarray]
    labels: list[str]
    metadata: pd.DataFrame  # manifest metadata columns and ``origin`` (test_set | production)
    info: dict[str, Any]  # n_test_set, n_production, production_note, from_version
    reference: pd.DataFrame | None = None  # the champion's reference profile: where image-stat slices are cut


@dataclass
class GateResult:
    """What the gate found, before anything changes; ``promote.apply_gate`` turns it into a decision."""

    model_name: str
    champion_version: str | None  # the champion the gate evaluated against
    candidate_version: str
    passed: bool
    decision: str  # "promoted" | "initial" when passed, else "refused"
    reason: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # {"champion": …, "challenger": …}
    comparison: pd.DataFrame | None = None  # metric, champion, challenger, delta, requirement, ok
    slices: pd.DataFrame | None = None  # slices.compare_slices
    challenger_slices: pd.DataFrame | None = None  # slices.slice_metrics of the challenger
    gate_set: dict[str, Any] = field(default_factory=dict)
    diff: PredictionDiff | None = None  # the gate-set images whose answer flips (None: not both models predicted)


def refused(settings: Settings, champion: str | None, candidate: str, reason: str, **extra: Any) -> GateResult:
    """A verdict reached without comparing predictions (e.g. a model that does not load)."""
    return GateResult(settings.model_name, champion, candidate, False, "refused", reason, **extra)


def fmt(value: float) -> str:
    return f"{value:.4f}" if np.isfinite(value) else "n/a"


def headline(evaluation: Evaluation) -> dict[str, float]:
    """The metrics recorded with every decision."""
    return {k: float(v) for k, v in evaluation.metrics().items() if k in HEADLINE_METRICS}


def initial_gate(
    settings: Settings, version: str, metrics: dict[str, float], gate_set: dict[str, Any] | None = None
) -> GateResult:
    """The minimum-quality bar for the first champion, on ``metrics`` measured by itself."""
    rule = settings.params.registry.min_quality
    value = float(metrics.get(rule.metric, float("nan")))
    passed = bool(np.isfinite(value) and value >= rule.threshold)
    if passed:
        reason = f"first champion: v{version} has {rule.metric} {fmt(value)} ≥ the minimum {rule.threshold:.4f}"
    elif np.isfinite(value):
        reason = (
            f"v{version} is not made champion: {rule.metric} {fmt(value)} is below the minimum {rule.threshold:.4f}"
        )
    else:
        reason = f"v{version} is not made champion: its {rule.metric} is unknown (registered without that metric)"
    comparison = pd.DataFrame(
        [
            {
                "metric": rule.metric,
                "champion": float("nan"),
                "challenger": value,
                "delta": float("nan"),
                "requirement": f">= {rule.threshold}",
                "ok": passed,
            }
        ]
    )
    return GateResult(
        settings.model_name,
        None,
        version,
        passed,
        "initial" if passed else "refused",
        reason,
        metrics={"challenger": {k: float(v) for k, v in metrics.items()}},
        comparison=comparison,
        gate_set=gate_set or {"source": "training-time test metrics"},
    )


def judge(
    settings: Settings,
    champion: str,
    candidate: str,
    champion_eval: Evaluation,
    challenger_eval: Evaluation,
    gate_set: GateSet,
) -> GateResult:
    """Primary metric by a margin, no class F1 and no declared slice regressed beyond tolerance."""
    rules = settings.params.registry.gate
    primary = _primary_row(rules, champion_eval.metrics(), challenger_eval.metrics())
    drops = _class_drops(champion_eval, challenger_eval)
    comparison = pd.DataFrame(
        [primary, *_other_metric_rows(rules, champion_eval, challenger_eval), *_class_rows(rules, drops)]
    )
    frame, slice_cols = _slice_frame(rules, champion_eval, challenger_eval, gate_set)
    slices = compare_slices(
        frame,
        label_col="label",
        champion_col="champion",
        challenger_col="challenger",
        slice_cols=slice_cols,
        tolerance=rules.slice_tolerance,
        min_size=rules.slices.min_size,
    )
    challenger_slices = slice_metrics(frame, label_col="label", pred_col="challenger", slice_cols=slice_cols)
    passed = bool(primary["ok"]) and not _regressed_classes(rules, drops) and not slices["regressed"].any()
    parts = [
        _primary_part(rules, champion, candidate, primary),
        *_class_part(rules, drops),
        *_slice_part(rules, slices),
        f"gate set: {gate_set.info['n_test_set']} held-out test images of v{champion} + "
        f"{gate_set.info['n_production']} labeled production images",
    ]
    return GateResult(
        settings.model_name,
        champion,
        candidate,
        passed,
        "promoted" if passed else "refused",
        ("promoted: " if passed else "refused: ") + "; ".join(parts),
        metrics={"champion": headline(champion_eval), "challenger": headline(challenger_eval)},
        comparison=comparison,
        slices=slices,
        challenger_slices=challenger_slices,
        gate_set=gate_set.info,
    )


# --- the steps of judge ------------------------------------------------------------------------


def _primary_row(rules: GateParams, old: dict[str, float], new: dict[str, float]) -> dict[str, Any]:
    """The primary metric must rise, by at least the margin."""
    delta = new[rules.metric] - old[rules.metric]
    return {
        "metric": rules.metric,
        "champion": old[rules.metric],
        "challenger": new[rules.metric],
        "delta": delta,
        "requirement": f"delta > 0 and >= {rules.margin}",
        "ok": bool(np.isfinite(delta) and delta > 0 and delta >= rules.margin - EPS),
    }


def _other_metric_rows(rules: GateParams, champion_eval: Evaluation, challenger_eval: Evaluation) -> list[dict]:
    """The other headline metrics, shown for information, not judged."""
    old, new = champion_eval.metrics(), challenger_eval.metrics()
    return [
        {"metric": k, "champion": old[k], "challenger": new[k], "delta": new[k] - old[k], "requirement": "", "ok": None}
        for k in HEADLINE_METRICS
        if k != rules.metric
    ]


def _class_drops(champion_eval: Evaluation, challenger_eval: Evaluation) -> dict[str, tuple[float, float]]:
    """Class → (champion F1, challenger F1) for every class the gate set holds."""
    new_classes = challenger_eval.per_class()
    return {
        cls: (scores["f1"], new_classes.get(cls, {"f1": 0.0})["f1"])
        for cls, scores in champion_eval.per_class().items()
        if scores["support"] != 0
    }


def _class_rows(rules: GateParams, drops: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    return [
        {
            "metric": f"f1_class_{cls}",
            "champion": before,
            "challenger": after,
            "delta": after - before,
            "requirement": f"drop <= {rules.class_tolerance}",
            "ok": before - after <= rules.class_tolerance + EPS,
        }
        for cls, (before, after) in drops.items()
    ]


def _regressed_classes(rules: GateParams, drops: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Class → F1 drop, for the classes that dropped beyond the tolerance, worst first."""
    limit = rules.class_tolerance + EPS
    bad = {cls: before - after for cls, (before, after) in drops.items() if before - after > limit}
    return dict(sorted(bad.items(), key=lambda kv: -kv[1]))


def _slice_frame(
    rules: GateParams, champion_eval: Evaluation, challenger_eval: Evaluation, gate_set: GateSet
) -> tuple[pd.DataFrame, list[str]]:
    """Both models' predictions with the declared slices: image statistics (cut at the reference's
    tertiles), metadata columns, and the origin of each image when production images joined."""
    reference, metadata = gate_set.reference, gate_set.metadata
    stats = [c for c in rules.slices.image_stats if reference is None or c in reference.columns]
    meta = [c for c in [*rules.slices.metadata, "origin"] if c in metadata.columns]
    if gate_set.info["n_production"] == 0:
        meta = [c for c in meta if c != "origin"]  # one value: the same as overall
    predictions = {
        "champion": np.array(champion_eval.classes)[champion_eval.y_pred],
        "challenger": np.array(challenger_eval.classes)[challenger_eval.y_pred],
    }
    return build_slice_frame(
        gate_set.images,
        gate_set.labels,
        predictions,
        stat_columns=stats,
        reference=reference,
        metadata=metadata,
        metadata_columns=meta,
    )


def _primary_part(rules: GateParams, champion: str, candidate: str, row: dict[str, Any]) -> str:
    verb = "beats" if row["ok"] else "does not beat"
    return (
        f"v{candidate} {verb} champion v{champion} on {rules.metric}: {fmt(row['champion'])} → "
        f"{fmt(row['challenger'])} ({row['delta']:+.4f}; needs > 0 and ≥ {rules.margin:+.4f})"
    )


def _class_part(rules: GateParams, drops: dict[str, tuple[float, float]]) -> list[str]:
    tolerance = rules.class_tolerance
    if bad := _regressed_classes(rules, drops):
        listed = _worst_first([f"{cls} ({-drop:+.3f})" for cls, drop in bad.items()])
        return [f"F1 dropped by more than {tolerance} for class(es) {listed}"]
    if not drops:
        return []
    worst = max(drops, key=lambda cls: drops[cls][0] - drops[cls][1])
    before, after = drops[worst]
    return [f"no class F1 dropped by more than {tolerance} (worst: class {worst} {after - before:+.3f})"]


def _slice_part(rules: GateParams, slices: pd.DataFrame) -> list[str]:
    tolerance = rules.slice_tolerance
    bad, checked = slices[slices["regressed"]], slices[slices["checked"]]
    if not bad.empty:
        listed = _worst_first(
            [f"{r.column}={r.slice} ({r.delta:+.3f}, n={r.n})" for r in bad.sort_values("delta").itertuples()]
        )
        return [f"accuracy dropped by more than {tolerance} on slice(s) {listed}"]
    if checked.empty:
        return []
    worst = checked.loc[checked["delta"].idxmin()]
    return [
        f"no slice accuracy dropped by more than {tolerance} across {len(checked)} slices "
        f"(worst: {worst['column']}={worst['slice']} {worst['delta']:+.3f})"
    ]


def _worst_first(items: list[str], shown: int = 5) -> str:
    """The first ``shown`` items (sorted worst first by the caller), and how many more there are."""
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")
