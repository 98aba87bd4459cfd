"""Alias moves made by a person, not the gate: ``rollback`` and ``assign_champion``; both are recorded.

A rollback returns ``champion`` to the champion before the current one, read from the promotion
history (``audit.champion_stack``), so repeated rollbacks walk back one champion at a time.
"""

from __future__ import annotations

from visionloop.config import Settings
from visionloop.contracts import CHAMPION, Decision, PromotionRecord
from visionloop.models.registry import (
    RegistryError,
    alias_version,
    model_version,
    move_champion,
    registered_metrics,
    registry_lock,
)
from visionloop.promotion.audit import champion_stack, finish_pending, history, record_move, version_label


class NothingToRollBack(RegistryError):
    """There is no champion, or no earlier champion to return to."""


def rollback(settings: Settings, trigger: str = "cli") -> PromotionRecord:
    """Move ``champion`` back to the champion before the current one, and record it."""
    name = settings.model_name
    with registry_lock(settings):
        finish_pending(settings)
        current = alias_version(settings, CHAMPION)
        if current is None:
            raise NothingToRollBack(f"{name} has no champion to roll back")
        target = _previous_champion(settings, current)
        if target is None:
            raise NothingToRollBack(f"{name} has no earlier champion than v{current} in its promotion history")
        reason = (
            f"rolled back: champion moved from v{current} back to v{target}, the champion before it "
            f"(asked by {trigger})"
        )
        return _move_and_record(settings, "rollback", current, target, reason, trigger)


def _previous_champion(settings: Settings, current: str) -> str | None:
    """The latest earlier champion that still exists (versions deleted since are walked over)."""
    stack = champion_stack(history(settings))
    while stack:
        candidate = stack.pop()
        if candidate == current:
            continue
        try:
            model_version(settings, candidate)
        except RegistryError:  # deleted since: go further back
            continue
        return candidate
    return None


def assign_champion(settings: Settings, version: str, reason: str, trigger: str = "cli") -> PromotionRecord:
    """Make ``version`` the champion without the gate — a person's decision, recorded with their reason.

    For what the gate cannot know (a known-bad champion, a fresh start); rollback walks back over it too.
    """
    with registry_lock(settings):
        finish_pending(settings)
        model_version(settings, version)  # fails clearly for a version that does not exist
        current = alias_version(settings, CHAMPION)
        why = (
            f"assigned by hand: champion moved from {version_label(current)} to v{version} without the gate ({reason})"
        )
        return _move_and_record(settings, "assigned", current, version, why, trigger)


def _move_and_record(
    settings: Settings, decision: Decision, current: str | None, target: str, reason: str, trigger: str
) -> PromotionRecord:
    """Move the champion to ``target`` and record it (journaled: ``audit.record_move``), with both
    versions' registered test metrics side by side."""
    metrics = registered_metrics(settings, current, target)
    record = PromotionRecord(
        model_name=settings.model_name,
        decision=decision,
        from_version=current,
        to_version=target,
        candidate_version=target,
        reason=reason,
        trigger=trigger,
        metrics={"champion": metrics.get(current or "", {}), "challenger": metrics.get(target, {})},
    )
    record_move(settings, record, lambda: move_champion(settings, target))
    return record
