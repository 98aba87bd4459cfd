"""What a challenger's shadow predictions say, and what the gate makes of them (``registry.gate.shadow``).

Serving logs, for a share of live requests, the challenger's answer beside the champion's
(``serving.shadow``, ``store.shadowlog``). ``shadow_report`` turns those rows into what a person or the gate
reads before trusting the challenger with real traffic:

* **agreement**: the share of images both models gave the same class; the **flip matrix** counts each
  champion class → challenger class;
* **confidence shift**: the challenger's mean top-1 confidence minus the champion's, on the same images;
* **latency ratio**: the challenger's mean forward time per image over the champion's (each in the batches it
  ran in: the champion's micro-batches, the shadow thread's);
* **drift verdict** of the traffic *as the challenger sees it* against the challenger's own reference profile
  (``monitoring.drift.run_drift_tests`` on the image statistics, the challenger's reduced embedding, its labels,
  confidence and probabilities — logged with each shadow row), so a challenger trained for yesterday's traffic
  shows it;
* where feedback labels arrived for shadow-scored predictions: both models' accuracy on them.

``judge_shadow`` is the gate's rule, pure like ``promotion.gate``: with ``min_predictions`` > 0 and fewer shadow
predictions beside the current champion, the gate **defers** (a recorded decision; the champion serves on and the
challenger keeps its alias, to be gated again — ``pending_challenger`` finds it for the monitor flow); where no
labels exist for current traffic (no labeled production image in the gate set, no feedback label on any of the
champion's logged predictions), a challenger disagreeing with the champion on more than ``max_disagreement`` of
them is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES, CHALLENGER, CHAMPION, DriftVerdict
from visionloop.models.cache import version_dir
from visionloop.models.registry import aliases
from visionloop.monitoring.drift import DriftThresholds, run_drift_tests
from visionloop.monitoring.features import CONFIDENCE_COLUMN, LABEL_COLUMN, feature_columns
from visionloop.promotion.audit import GATE_DECISIONS, history
from visionloop.promotion.gate import GateResult, refused
from visionloop.store.database import make_engine
from visionloop.store.shadowlog import count_labeled, count_shadow, read_shadow


@dataclass
class ShadowReport:
    """The challenger's shadow predictions beside one champion, summarised (module docstring)."""

    model_name: str
    champion_version: str
    challenger_version: str
    n: int
    agreement: float | None = None
    flips: pd.DataFrame = field(default_factory=pd.DataFrame)  # champion class (rows) × challenger class (columns)
    champion_confidence: float | None = None
    challenger_confidence: float | None = None
    champion_ms: float | None = None
    challenger_ms: float | None = None
    n_labeled: int = 0
    champion_labels: int = 0  # the champion's predictions with a feedback label (labels exist for its traffic)
    champion_accuracy: float | None = None  # on the shadow-scored predictions that got a feedback label
    challenger_accuracy: float | None = None
    drift: DriftVerdict | None = None
    drift_note: str = ""

    @property
    def disagreement(self) -> float | None:
        return None if self.agreement is None else 1.0 - self.agreement

    @property
    def confidence_shift(self) -> float | None:
        if self.champion_confidence is None or self.challenger_confidence is None:
            return None
        return self.challenger_confidence - self.champion_confidence

    @property
    def latency_ratio(self) -> float | None:
        if not self.champion_ms or self.challenger_ms is None:
            return None
        return self.challenger_ms / self.champion_ms

    def metrics(self) -> dict[str, float]:
        """The figures recorded with a gate decision (``PromotionRecord.metrics["shadow"]``)."""
        figures = {"n": self.n, "agreement": self.agreement, "confidence_shift": self.confidence_shift,
                   "latency_ratio": self.latency_ratio, "n_labeled": self.n_labeled,
                   "champion_accuracy": self.champion_accuracy, "challenger_accuracy": self.challenger_accuracy,
                   "drift": None if self.drift is None else float(self.drift.drift)}
        return {k: float(v) for k, v in figures.items() if v is not None}

    def summary(self) -> str:
        """One line, for a gate reason and the demo."""
        if self.n == 0:
            return f"no shadow predictions of v{self.challenger_version} beside v{self.champion_version}"
        parts = [f"{self.n} shadow predictions of v{self.challenger_version} beside v{self.champion_version}: "
                 f"agreement {self.agreement:.3f}"]
        if self.confidence_shift is not None:
            parts.append(f"confidence shift {self.confidence_shift:+.3f}")
        if self.latency_ratio is not None:
            parts.append(f"latency ratio {self.latency_ratio:.2f}")
        if self.n_labeled:
            parts.append(f"on {self.n_labeled} labeled: accuracy {self.champion_accuracy:.3f} → "
                         f"{self.challenger_accuracy:.3f}")
        parts.append(self.drift_note)
        return ", ".join(parts)

    def text(self) -> str:
        """For a terminal: the summary, then the flip matrix (rows: the champion's class, columns: the challenger's)."""
        if not self.n:
            return self.summary()
        return "\n".join([self.summary(), "", "flips (rows: champion's class, columns: challenger's class):",
                          self.flips.to_string()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name, "champion_version": self.champion_version,
            "challenger_version": self.challenger_version, "n": self.n, "agreement": self.agreement,
            "disagreement": self.disagreement, "confidence_shift": self.confidence_shift,
            "champion_confidence": self.champion_confidence, "challenger_confidence": self.challenger_confidence,
            "latency_ratio": self.latency_ratio, "champion_ms": self.champion_ms, "challenger_ms": self.challenger_ms,
            "n_labeled": self.n_labeled, "champion_accuracy": self.champion_accuracy,
            "challenger_accuracy": self.challenger_accuracy,
            "flips": {str(a): {str(b): int(n) for b, n in row.items() if n} for a, row in self.flips.iterrows()},
            "drift": None if self.drift is None else {
                "drift": self.drift.drift, "severity": self.drift.severity,
                "drifted_features": self.drift.drifted_features, "n_current": self.drift.n_current},
            "drift_note": self.drift_note,
        }


def shadow_count(settings: Settings, champion: str, challenger: str) -> int:
    """How many shadow predictions ``challenger`` made beside ``champion``."""
    engine = make_engine(settings.db_url)
    try:
        return count_shadow(engine, settings.model_name, challenger, champion)
    finally:
        engine.dispose()


def shadow_report(settings: Settings, champion: str, challenger: str, reference: pd.DataFrame | None = None,
                  classes: list[str] | None = None, reduction: dict[str, Any] | None = None) -> ShadowReport:
    """The report of ``challenger``'s shadow predictions beside ``champion`` (every one logged).

    ``reference``, ``classes``, ``reduction``: the challenger's reference profile and model facts, for the drift
    verdict (``challenger_facts``); without them there is no verdict.
    """
    engine = make_engine(settings.db_url)
    try:
        frame = read_shadow(engine, settings.model_name, challenger, champion)
        champion_labels = count_labeled(engine, settings.model_name, champion)
    finally:
        engine.dispose()
    report = ShadowReport(settings.model_name, str(champion), str(challenger), n=len(frame),
                          champion_labels=champion_labels)
    if frame.empty:
        report.drift_note = "no drift verdict (no shadow predictions)"
        return report
    same = frame["champion_label"] == frame["challenger_label"]
    report.agreement = float(same.mean())
    report.flips = pd.crosstab(frame["champion_label"], frame["challenger_label"])
    report.champion_confidence = float(frame["champion_confidence"].mean())
    report.challenger_confidence = float(frame["challenger_confidence"].mean())
    report.champion_ms = float(frame["champion_ms"].mean())
    report.challenger_ms = float(frame["challenger_ms"].mean())
    labeled = frame[frame["feedback_label"].notna()]
    report.n_labeled = len(labeled)
    if len(labeled):
        report.champion_accuracy = float((labeled["champion_label"] == labeled["feedback_label"]).mean())
        report.challenger_accuracy = float((labeled["challenger_label"] == labeled["feedback_label"]).mean())
    _add_drift(settings, report, frame, reference, classes, reduction)
    return report


def _add_drift(settings: Settings, report: ShadowReport, frame: pd.DataFrame, reference: pd.DataFrame | None,
               classes: list[str] | None, reduction: dict[str, Any] | None) -> None:
    """The drift verdict of the challenger's view of the traffic against its own reference (the monitor's tests)."""
    params = settings.params.monitoring
    if reference is None or classes is None:
        report.drift_note = "no drift verdict (the challenger's reference profile was not given)"
        return
    current = frame.tail(params.window).rename(
        columns={"challenger_label": LABEL_COLUMN, "challenger_confidence": CONFIDENCE_COLUMN})
    if len(current) < params.min_window:
        report.drift_note = f"no drift verdict ({len(current)} < monitoring.min_window {params.min_window})"
        return
    columns = [c for c in feature_columns(classes, reduction)
               if c in reference.columns and c in current.columns and current[c].notna().any()]
    if not columns:
        report.drift_note = "no drift verdict (no feature shared with the challenger's reference)"
        return
    report.drift = run_drift_tests(reference, current[columns], DriftThresholds.of(params), columns=columns,
                                   model_name=report.model_name, model_version=report.challenger_version)
    drifted = report.drift.drifted_features
    report.drift_note = (f"drift against v{report.challenger_version}'s reference ({report.drift.severity}: "
                         f"{', '.join(drifted[:4])}{' …' if len(drifted) > 4 else ''})" if report.drift.drift
                         else f"no drift against v{report.challenger_version}'s reference ({len(columns)} features)")


def judge_shadow(settings: Settings, gate: GateResult, report: ShadowReport) -> GateResult:
    """The gate's verdict with the shadow rule applied (module docstring); a deferral replaces any verdict."""
    rules = settings.params.registry.gate.shadow
    metrics = {**gate.metrics, "shadow": report.metrics()}
    if rules.min_predictions and report.n < rules.min_predictions:
        reason = (f"deferred: v{report.challenger_version} has {report.n} of the {rules.min_predictions} shadow "
                  f"predictions beside champion v{report.champion_version} the gate waits for "
                  f"(registry.gate.shadow.min_predictions); v{report.champion_version} serves on, "
                  f"v{report.challenger_version} stays {CHALLENGER} and is gated again once they are logged")
        return replace(gate, passed=False, decision="deferred", reason=reason, metrics=metrics)
    if report.n == 0:
        return replace(gate, metrics=metrics)
    labels_exist = gate.gate_set.get("n_production", 0) > 0 or report.champion_labels > 0
    disagreement = report.disagreement or 0.0
    if gate.passed and not labels_exist and disagreement > rules.max_disagreement:
        reason = (f"refused: v{report.challenger_version} disagrees with the champion on {disagreement:.3f} of "
                  f"{report.n} unlabeled live images (more than registry.gate.shadow.max_disagreement "
                  f"{rules.max_disagreement}) and no labels exist for current traffic. The gate had found: "
                  f"{gate.reason}")
        return replace(gate, passed=False, decision="refused", reason=reason, metrics=metrics)
    return replace(gate, reason=f"{gate.reason}; shadow: {report.summary()}", metrics=metrics)


def challenger_facts(settings: Settings, version: ModelVersion) -> dict[str, Any]:
    """``shadow_report``'s ``reference``, ``classes`` and ``reduction`` of a registered version, read from its bundle
    files (no model is loaded)."""
    root = version_dir(settings, version)
    reduction = root / BUNDLE_FILES["embedding_reduction"]
    profile = root / BUNDLE_FILES["reference_profile"]
    return {
        "reference": pd.read_parquet(profile) if profile.exists() else None,
        "classes": json.loads((root / BUNDLE_FILES["classes"]).read_text()),
        "reduction": json.loads(reduction.read_text()) if reduction.exists() else None,
    }


def gate_with_shadow(settings: Settings, champion: str, candidate: ModelVersion,
                     evaluate: Callable[[], GateResult]) -> GateResult:
    """The gate of ``candidate`` against ``champion`` with its shadow evidence: deferred without evaluating when
    too few shadow predictions are logged, else ``evaluate()``'s verdict judged with the shadow rule."""
    version = str(candidate.version)
    rules = settings.params.registry.gate.shadow
    try:
        count = shadow_count(settings, champion, version)
    except Exception as error:  # noqa: BLE001 - an unreadable log is a reason in the record, not a crash
        if not rules.min_predictions:
            return evaluate()
        reason = f"deferred: the shadow predictions of v{version} could not be counted ({error}); nothing changed"
        return replace(refused(settings, champion, version, reason), decision="deferred")
    if rules.min_predictions and count < rules.min_predictions:
        waiting = refused(settings, champion, version, "too few shadow predictions")
        return judge_shadow(settings, waiting, ShadowReport(settings.model_name, champion, version, n=count))
    if not count:  # nothing to report, nothing required
        return evaluate()
    try:
        facts = challenger_facts(settings, candidate)
    except Exception:  # noqa: BLE001 - no drift verdict then; the gate's own load of the challenger says why
        facts = {}
    return judge_shadow(settings, evaluate(), shadow_report(settings, champion, version, **facts))


def pending_challenger(settings: Settings) -> str | None:
    """The challenger to gate again now: its latest gate decision was a deferral and enough shadow predictions
    beside the current champion are logged since (the monitor flow promotes it; a person can run ``promote``)."""
    current = aliases(settings)
    challenger, champion = current.get(CHALLENGER), current.get(CHAMPION)
    if challenger is None or champion is None or challenger == champion:
        return None
    # A canary started or rolled back since a deferral settles it too: a rolled-back challenger is not re-gated.
    settled = (*GATE_DECISIONS, "canary", "canary_rollback")
    decided = [r for r in history(settings) if r.candidate_version == challenger and r.decision in settled]
    if not decided or decided[0].decision != "deferred":
        return None
    if shadow_count(settings, champion, challenger) < settings.params.registry.gate.shadow.min_predictions:
        return None
    return challenger
