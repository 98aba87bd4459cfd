"""Promotion: run the gate on two registered versions and act on its verdict.

* ``register_run`` makes a training run's model a new version under the ``challenger`` alias; the
  very first champion is chosen here, and only if it passes ``registry.min_quality``.
* ``evaluate_gate`` loads champion and challenger, has both predict the frozen gate set and asks
  ``gate.judge`` for the verdict, then applies the shadow rule (``promotion.shadow``: too few shadow predictions
  on live traffic defer the decision, without evaluating); it changes nothing. ``apply_gate`` acts on the verdict.
* Every decision, promoted or refused, is recorded (``promotion.audit``).

Safety: serving follows the ``champion`` alias, and the alias moves in one registry call, so a
promotion is atomic from serving's point of view. The move happens under ``registry_lock`` and is
compare-and-set: the champion is re-read under the lock and the change refused if it moved since
the gate evaluated. A move is journaled before it happens (``audit.record_move``), so a job
killed between the move and its record leaves a record for the next registry operation to log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities.model_registry import ModelVersion

from visionloop.config import Settings
from visionloop.contracts import CHALLENGER, CHAMPION, PromotionRecord
from visionloop.models.bundle import ServableModel
from visionloop.models.cache import load_version, version_dir
from visionloop.models.onnx_registry import store_onnx
from visionloop.models.registry import (
    RegistryError,
    alias_version,
    aliases,
    model_version,
    move_champion,
    register_version,
    registry_lock,
)
from visionloop.promotion.audit import finish_pending, record_decision, record_move, version_label
from visionloop.promotion.diff import compare_predictions
from visionloop.promotion.gate import GateResult, headline, initial_gate, judge, refused
from visionloop.promotion.gate_set import gate_set_for, unseen_by
from visionloop.promotion.shadow import gate_with_shadow
from visionloop.training.evaluate import Evaluation, evaluate_model


class NothingToPromote(RegistryError):
    """There is no challenger (and no version was named)."""


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    record: PromotionRecord | None = None  # the first-champion decision, when there was no champion


def register_run(settings: Settings, run_id: str, metrics: dict[str, float], trigger: str) -> RegisteredVersion:
    """Register ``runs:/{run_id}/model`` as a new version, tagged with lineage + metrics, as challenger.

    With no champion yet, the version becomes champion if ``metrics[min_quality.metric]`` reaches
    the threshold; that decision (``initial`` or ``refused``) is recorded like every promotion. The version's
    ONNX export is stored with it (``models.onnx_registry``).
    """
    version = register_version(settings, run_id, metrics)
    store_onnx(settings, version)  # the version's ONNX export, checked on the gate set, for an ONNX runtime
    record = None
    if alias_version(settings, CHAMPION) is None:
        gate = initial_gate(settings, version, metrics)
        with registry_lock(settings):
            if alias_version(settings, CHAMPION) is None:  # nobody became champion in the meantime
                record = _apply_locked(settings, gate, trigger)
    held = sorted(alias for alias, v in aliases(settings).items() if v == version)
    return RegisteredVersion(settings.model_name, version, run_id, held, record)


def promote(settings: Settings, trigger: str, candidate_version: str | None = None) -> PromotionRecord:
    """Gate the challenger (or ``candidate_version``) against the champion and act on the verdict."""
    return apply_gate(settings, evaluate_gate(settings, candidate_version), trigger)


def evaluate_gate(settings: Settings, candidate_version: str | None = None) -> GateResult:
    """Evaluate champion and candidate on the same frozen gate set; changes nothing."""
    current = aliases(settings)
    champion = current.get(CHAMPION)
    candidate = str(candidate_version) if candidate_version is not None else current.get(CHALLENGER)
    if candidate is None:
        raise NothingToPromote(
            f"{settings.model_name} has no {CHALLENGER}: train and register a model, or name a version"
        )
    version = model_version(settings, candidate)  # RegistryError for a version that does not exist
    if candidate == champion:
        return refused(settings, champion, candidate, f"v{candidate} is already the champion; nothing to promote")
    if champion is None:
        return _evaluate(settings, champion, version)
    # Its answers on live traffic beside the champion's (registry.gate.shadow): too few, and the gate defers.
    return gate_with_shadow(settings, champion, version, lambda: _evaluate(settings, champion, version))


def _evaluate(settings: Settings, champion: str | None, candidate: ModelVersion) -> GateResult:
    """Load both versions, predict the gate set with each, judge. Any failure is a refusal that says why."""
    version = str(candidate.version)
    champion_model = champion_dir = None
    if champion is not None:
        try:
            champion_model, champion_dir = _load(settings, model_version(settings, champion))
        except Exception as error:  # noqa: BLE001 - any failure: no baseline to judge against
            return refused(
                settings,
                champion,
                version,
                f"the champion v{champion} could not be loaded to evaluate against "
                f"({type(error).__name__}: {error}); roll back or repair it first",
            )
    try:
        challenger_model, challenger_dir = _load(settings, candidate)
    except Exception as error:  # noqa: BLE001 - a challenger that does not load never serves
        reason = f"the challenger v{version} could not be loaded ({type(error).__name__}: {error})"
        return refused(settings, champion, version, reason)
    known = set((champion_model or challenger_model).classes)
    try:
        unseen = unseen_by(settings, champion, version, challenger_dir)
        gate_set = gate_set_for(settings, champion_dir or challenger_dir, known, unseen)
    except Exception as error:  # noqa: BLE001 - without a gate set there is no verdict
        return refused(settings, champion, version, f"the gate set could not be read ({error})")
    gate_set.info["from_version"] = champion or version
    try:
        challenger_eval = _predict(challenger_model, gate_set.images, gate_set.labels)
    except Exception as error:  # noqa: BLE001 - any failure to predict is a refusal
        reason = f"the challenger v{version} could not predict on the gate set ({type(error).__name__}: {error})"
        return refused(settings, champion, version, reason, gate_set=gate_set.info)
    if champion is None or champion_model is None:
        return initial_gate(settings, version, headline(challenger_eval), gate_set.info)
    try:
        champion_eval = _predict(champion_model, gate_set.images, gate_set.labels)
    except Exception as error:  # noqa: BLE001
        reason = f"the champion v{champion} could not predict on its own gate set ({error})"
        return refused(settings, champion, version, reason, gate_set=gate_set.info)
    gate = judge(settings, champion, version, champion_eval, challenger_eval, gate_set)
    # What the promotion changes, image by image, from the predictions just made (audit writes the gallery).
    gate.diff = compare_predictions(
        gate_set.images, gate_set.labels, (champion_eval.classes, champion_eval.probabilities),
        (challenger_eval.classes, challenger_eval.probabilities),
        (f"{settings.model_name} v{champion}", f"{settings.model_name} v{version}"))
    return gate


def _load(settings: Settings, version: ModelVersion) -> tuple[ServableModel, Path]:
    return load_version(settings, version), version_dir(settings, version)


def _predict(model: ServableModel, images: list[np.ndarray], labels: list[str]) -> Evaluation:
    evaluation = evaluate_model(model, images, labels)
    if not np.isfinite(evaluation.probabilities).all():
        raise ValueError("it produced non-finite probabilities")
    return evaluation


def apply_gate(settings: Settings, gate: GateResult, trigger: str) -> PromotionRecord:
    """Act on a verdict under the lock, with compare-and-set on the champion; record the decision."""
    with registry_lock(settings):
        return _apply_locked(settings, gate, trigger)


def _apply_locked(settings: Settings, gate: GateResult, trigger: str) -> PromotionRecord:
    finish_pending(settings)  # a move an earlier job made but did not record: record it before judging anew
    current = alias_version(settings, CHAMPION)
    decision, reason, to_version = gate.decision, gate.reason, current
    moves = False
    if gate.passed and current != gate.champion_version:
        decision = "refused"
        reason = (
            f"refused: the champion moved from {version_label(gate.champion_version)} to {version_label(current)} "
            f"while the gate was evaluating v{gate.candidate_version}; nothing changed (run promote again to gate "
            f"against the new champion). The gate had found: {gate.reason}"
        )
    elif gate.passed:
        moves, to_version = True, gate.candidate_version
    record = PromotionRecord(
        model_name=settings.model_name,
        decision=decision,
        from_version=current,
        to_version=to_version,
        candidate_version=gate.candidate_version,
        reason=reason,
        trigger=trigger,
        metrics=gate.metrics,
        flips=gate.diff.summary().totals() if gate.diff is not None else {},
    )
    if moves:
        record_move(settings, record, lambda: move_champion(settings, gate.candidate_version), gate)
    else:
        record_decision(settings, record, gate)
    return record
