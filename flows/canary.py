"""The canary flow: the challenger answers a share of live requests, then is promoted or rolled back by itself."""

from __future__ import annotations

from prefect import flow

from flows.story import tell_promotion
from tasks.canary import start, watch
from visionloop.config import Settings
from visionloop.promotion.audit import decision_title


@flow(name="canary", log_prints=True)
def canary(percent: float = 10.0, gate: bool = True, trigger: str = "flow:canary",
           project_dir: str | None = None) -> dict:
    """Gate the challenger offline (unless ``gate`` is false); on a pass, serve it to ``percent`` % of /predict,
    watch, promote or roll back."""
    settings = Settings.load(project_dir)
    started = start(settings, percent / 100, trigger, gate)
    print(started.record.reason)
    record = started.record
    if started.state is not None:
        record = watch(settings, started.state, trigger) or record  # None: ended elsewhere (its record says how)
    tell_promotion(settings, record, decision_title(record))
    return record.to_dict()


if __name__ == "__main__":
    canary()
