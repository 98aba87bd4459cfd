"""Tasks of the self-healing loop: decide, snapshot, prepare, fine-tune, evaluate, register, gate."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retry import retry_unless
from visionloop.config import Settings
from visionloop.contracts import PromotionRecord
from visionloop.data import dvcrepo
from visionloop.healing import alerts, retrain
from visionloop.healing.retrain import RetrainWorkspace
from visionloop.models.registry import RegistryError
from visionloop.monitoring import reports
from visionloop.promotion import promote as promotion


@task(name="decide whether to retrain", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def decide(settings: Settings, verdict: dict[str, Any], flow_run_id: str | None) -> alerts.AlertDecision:
    """Record the alert; start a retrain unless one runs or the cooldown holds."""
    return alerts.decide_retrain(settings, verdict, flow_run_id)


@task(name="collect newly labeled production images", cache_policy=NO_CACHE)
def collect_labeled(settings: Settings):
    """Production images with feedback labels that no data version holds yet."""
    return retrain.new_labeled_production(settings)


@task(name="snapshot and version data", cache_policy=NO_CACHE)
def snapshot_data(settings: Settings, additions):
    """Current data + new labels as a new DVC data version."""
    return retrain.snapshot_data(settings, additions)


@task(name="push data to DVC remote", retries=3, retry_delay_seconds=10, cache_policy=NO_CACHE)
def push_data(settings: Settings) -> int:
    """Store the new data version in the DVC remote."""
    return dvcrepo.push(settings)


@task(name="validate and split snapshot", cache_policy=NO_CACHE)
def prepare_snapshot(settings: Settings, snapshot, workspace: RetrainWorkspace) -> dict[str, Any]:
    """Quarantine bad images, split the snapshot for training."""
    return retrain.prepare_snapshot(settings, snapshot.manifest, workspace)


@task(name="train challenger from champion", cache_policy=NO_CACHE)
def train_challenger(settings: Settings, workspace: RetrainWorkspace, snapshot, base: str, trigger: str):
    """Transfer learning from the champion's weights."""
    return retrain.train_challenger(settings, workspace, snapshot.data_version, base, trigger)


@task(name="evaluate challenger", cache_policy=NO_CACHE)
def evaluate_challenger(settings: Settings, workspace: RetrainWorkspace) -> dict[str, float]:
    """Test-split metrics of the new data version."""
    return retrain.evaluate_challenger(settings, workspace)


@task(name="register challenger", retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_challenger(settings: Settings, workspace: RetrainWorkspace, metrics: dict[str, float], trigger: str):
    """A new registry version with alias challenger."""
    return retrain.register_challenger(settings, workspace, metrics, trigger)


# Retry MLflow hiccups, not the registry's own refusals (nothing to promote, no champion...).
@task(name="promotion gate", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless(RegistryError),
      cache_policy=NO_CACHE)
def promote(settings: Settings, trigger: str, candidate_version: str | None = None) -> PromotionRecord:
    """Champion vs challenger on the frozen gate set; promote only a clear, safe win."""
    return promotion.promote(settings, trigger=trigger, candidate_version=candidate_version)


@task(name="close alert", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def close_alert(settings: Settings, alert_id: str, outcome: str, report_dir: str | None = None) -> None:
    """Record how the retrain ended; also on the index page of the drift check that raised the alert."""
    alerts.AlertLog(settings.db_url).finish(alert_id, outcome)
    if report_dir:
        reports.record_retrain(report_dir, outcome)
