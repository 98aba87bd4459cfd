"""The canary: the challenger answers a share of live /predict requests, is watched, then promoted or rolled back.

``visionloop promote --canary PERCENT`` and the ``canary`` flow run these steps; each one is a record in the
promotion history (``registry history``):

1. ``start_canary`` — the offline gate first (``promote.evaluate_gate``): a challenger it refuses never
   answers a user (the refusal is recorded as usual, no canary); ``gate=False`` (``--no-gate``) skips it and
   leaves the decision to the canary alone. Then the canary is written to the registry
   (``models.registry.set_canary``: the ``canary`` alias on the challenger and its share) under
   ``registry_lock``, and a ``canary`` record says who started it, at which share, beside which champion.
   Every serving process follows it (``serving.canary``) within ``serving.poll_seconds``.
2. ``check_canary`` — the window's verdict (``canary_window.judge``); changes nothing.
3. ``apply_verdict`` — acts on it. **finish**: the canary's pass, as a ``GateResult`` (its figures and
   summary; the offline gate's verdict, if one ran, is in the start's record), goes through
   ``promote.apply_gate`` — the locked compare-and-set move of the champion (this module never moves it;
   a champion that moved since the start is refused there) — then the canary is cleared. **rollback**: the canary
   is cleared (the challenger loses its share, the champion is unchanged, the challenger keeps its alias),
   a ``canary_rollback`` record says why, and the challenger's canary images are compared with the champion's
   answers in a prediction-diff gallery (``diff_gallery.diff_models``), logged with that record.
4. ``watch_canary`` — steps 2–3 every ``check_seconds`` until the canary ends, reporting each verdict.

A canary whose champion moved meanwhile (a rollback, a hand assignment) is rolled back: its comparison arm
is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from visionloop.config import Settings
from visionloop.contracts import CHALLENGER, CHAMPION, CanaryState, DiffSummary, PromotionRecord
from visionloop.data.images import load_image
from visionloop.models.cache import load_project_version
from visionloop.models.registry import (
    RegistryError,
    alias_version,
    canary_state,
    clear_canary,
    registry_lock,
    set_canary,
)
from visionloop.models.tracking import add_artifacts
from visionloop.promotion.audit import finish_pending, record_decision
from visionloop.promotion.canary_window import CanaryVerdict, judge, read_window
from visionloop.promotion.diff_gallery import GALLERY_FILES, diff_models
from visionloop.promotion.gate import GateResult
from visionloop.promotion.promote import apply_gate, evaluate_gate
from visionloop.store.predlog import PredictionLog

log = logging.getLogger(__name__)


class CanaryError(RegistryError):
    """A canary that cannot be started (one is running, the version is not the challenger, …)."""


@dataclass
class CanaryStart:
    """What ``start_canary`` did: the canary (None when the gate refused) and the recorded decision."""

    state: CanaryState | None
    record: PromotionRecord


def start_canary(
    settings: Settings, share: float, trigger: str, candidate_version: str | None = None, gate: bool = True
) -> CanaryStart:
    """Gate the challenger offline (unless ``gate`` is False); on a pass, let it answer ``share`` (0–1] of requests
    and record the start."""
    if not 0 < share <= 1:
        raise CanaryError(f"the canary share must be above 0 and at most 100 %, got {100 * share:g} %")
    if (running := canary_state(settings)) is not None:
        raise CanaryError(f"a canary of v{running.version} is already running (since {running.started_at})")
    challenger = alias_version(settings, CHALLENGER)
    if candidate_version is not None and str(candidate_version) != challenger:
        raise CanaryError(f"v{candidate_version} is not the challenger (the {CHALLENGER} alias is on "
                          f"{f'v{challenger}' if challenger else 'no version'}): a canary serves the challenger")
    if challenger is None:
        raise CanaryError(f"{settings.model_name} has no {CHALLENGER}: train and register a model first")
    champion = alias_version(settings, CHAMPION)
    if champion is None or champion == challenger:
        raise CanaryError(f"a canary needs a champion beside the challenger v{challenger}: run `visionloop promote`")
    verdict = evaluate_gate(settings, challenger) if gate else None
    if verdict is not None and (verdict.decision != "promoted" or verdict.champion_version != champion):
        return CanaryStart(None, apply_gate(settings, verdict, trigger))  # refused (or deferred): no canary
    with registry_lock(settings):
        finish_pending(settings)
        if alias_version(settings, CHAMPION) != champion or alias_version(settings, CHALLENGER) != challenger:
            raise CanaryError("the champion or the challenger moved while the canary was starting; run it again")
        state = CanaryState(challenger, champion, share, datetime.now(UTC).isoformat(), trigger, gate)
        set_canary(settings, state)
        offline = f"The offline gate passed: {verdict.reason}" if verdict else "The offline gate was skipped."
        record = PromotionRecord(
            model_name=settings.model_name, decision="canary", from_version=champion, to_version=champion,
            candidate_version=state.version, trigger=trigger, metrics=verdict.metrics if verdict else {},
            reason=(f"canary started: v{state.version} answers {100 * share:g} % of /predict requests beside the "
                    f"champion v{champion}, watched for {settings.params.promotion.canary.window_seconds:g} s. "
                    f"{offline}"),
        )
        record_decision(settings, record)
    return CanaryStart(state, record)


def check_canary(settings: Settings, state: CanaryState, now: datetime | None = None) -> CanaryVerdict:
    """The verdict on ``state``'s window now (``canary_window``); changes nothing."""
    return judge(settings.params.promotion.canary, read_window(settings, state, now))


def apply_verdict(
    settings: Settings, state: CanaryState, verdict: CanaryVerdict, trigger: str
) -> PromotionRecord | None:
    """Finish or roll back the canary as ``verdict`` says (None for ``wait``); the record of what was done."""
    if alias_version(settings, CHAMPION) != state.champion:
        verdict = replace(verdict, action="rollback",
                          reason=f"the champion moved from v{state.champion} during the canary: no arm to compare")
    if verdict.action == "wait":
        return None
    if verdict.action == "rollback":
        return rollback_canary(settings, state, verdict.reason, trigger)
    offline = "the offline gate passed at its start" if state.gated else "the offline gate was skipped"
    passed = GateResult(
        settings.model_name, state.champion, state.version, True, "promoted",
        f"promoted after a canary of {100 * state.share:g} % ({offline}): {verdict.reason}",
        metrics={"canary": {k: float(v) for k, v in verdict.figures.items() if isinstance(v, int | float)}},
    )
    record = apply_gate(settings, passed, trigger)  # compare-and-set: refused if the champion moved since the start
    with registry_lock(settings):
        if canary_state(settings) == state:
            clear_canary(settings)
    return record


def rollback_canary(settings: Settings, state: CanaryState, why: str, trigger: str) -> PromotionRecord:
    """Take the challenger's share away (the champion is unchanged) and record why, with the gallery of its flips."""
    with registry_lock(settings):
        if canary_state(settings) != state:
            raise CanaryError(f"the canary of v{state.version} started {state.started_at} is no longer running")
        clear_canary(settings)
    summary = _canary_gallery(settings, state)
    record = PromotionRecord(
        model_name=settings.model_name, decision="canary_rollback", from_version=state.champion,
        to_version=state.champion, candidate_version=state.version, trigger=trigger,
        reason=f"canary rolled back: v{state.version} no longer answers requests, v{state.champion} answers all. "
               f"Why: {why}." + (f" Gallery of its flips: {summary.folder}" if summary is not None else ""),
        flips=summary.totals() if summary is not None else {},
    )
    run_id = record_decision(settings, record)
    if summary is not None and summary.folder is not None:
        add_artifacts(settings, run_id, [(f"{summary.folder}/{name}", "diff") for name in GALLERY_FILES])
    return record


def _canary_gallery(settings: Settings, state: CanaryState) -> DiffSummary | None:
    """The champion's and the challenger's answers on the images the challenger answered during the canary.

    Best effort: a gallery that cannot be made (images not stored, a model that does not load) costs the
    rollback its pictures, never the rollback itself.
    """
    plog = PredictionLog(settings.db_url)
    try:
        since = datetime.fromisoformat(state.started_at)
        rows = plog.read_window(last_n=settings.params.promotion.canary.gallery_images, since=since,
                                model_version=state.version)
        rows = rows[rows["image_path"].notna()] if len(rows) else rows
        if not len(rows):
            return None
        images = [load_image(path) for path in rows["image_path"]]
        labels = [label if isinstance(label, str) else None for label in rows["feedback_label"]]  # where known
        champion = load_project_version(settings, state.champion)
        challenger = load_project_version(settings, state.version)
        return diff_models(settings, champion, challenger, images, labels,
                           title=f"canary v{state.version} beside v{state.champion}: rolled back")
    except Exception as error:  # noqa: BLE001 - the rollback is done and recorded either way
        log.warning("no prediction-diff gallery for the rolled-back canary of v%s: %s", state.version, error)
        return None
    finally:
        plog.dispose()


def watch_canary(
    settings: Settings, state: CanaryState, trigger: str,
    progress: Callable[[CanaryVerdict], object] = lambda _verdict: None,
    sleep: Callable[[float], object] = time.sleep,
) -> PromotionRecord | None:
    """Judge the canary every ``check_seconds`` until it finishes or is rolled back; its final record.

    None when the canary was ended by someone else meanwhile (their record says how).
    """
    while True:
        if canary_state(settings) != state:
            return None
        verdict = check_canary(settings, state)
        progress(verdict)
        if (record := apply_verdict(settings, state, verdict, trigger)) is not None:
            return record
        sleep(settings.params.promotion.canary.check_seconds)
