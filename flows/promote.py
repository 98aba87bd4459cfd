"""The promote flow: the champion/challenger gate, on demand or after training."""

from __future__ import annotations

from prefect import flow

from flows.story import tell_promotion
from tasks.retrain import promote as promotion_gate
from visionloop.config import Settings
from visionloop.promotion.audit import decision_title


@flow(name="promote", log_prints=True)
def promote(
    candidate_version: str | None = None, trigger: str = "flow:promote", project_dir: str | None = None
) -> dict:
    """Promote the challenger if it wins the gate; the decision is recorded either way."""
    settings = Settings.load(project_dir)
    record = promotion_gate(settings, trigger, candidate_version)
    print(f"{record.decision}: champion v{record.from_version or '-'} → v{record.to_version or '-'} ({record.reason})")
    tell_promotion(settings, record, decision_title(record))
    return record.to_dict()


if __name__ == "__main__":
    promote()
