"""The loop settles: a model healed on drifted traffic raises no new alert on it, yet still sees a new shift."""

from __future__ import annotations

from pathlib import Path

from helpers.project import copy_project
from helpers.traffic import log_traffic, unseen_images

from visionloop.config import Settings

DRIFT = ("new_camera", 2)  # the demo's shift


def test_a_healed_model_settles_on_its_traffic_and_still_sees_a_new_shift(
    trained_project: Path, tmp_path: Path
) -> None:
    from visionloop.data.corruptions import corrupt
    from visionloop.healing import retrain
    from visionloop.models.uris import alias_uri
    from visionloop.monitoring.monitor import run_monitor
    from visionloop.monitoring.monitored import load_monitored

    settings: Settings = copy_project(trained_project, tmp_path / "project", {"retrain": {"epochs": 1}})
    images, labels = unseen_images(settings)
    assert len(images) >= 450
    v1 = load_monitored(settings)

    # v1 meets the new camera; people label what it saw; the retrain's steps heal it (no promotion needed here).
    log_traffic(settings, v1.model, corrupt(images[:250], *DRIFT, seed=1), labels[:250])
    assert run_monitor(settings, performance=False).alert is not None
    additions = retrain.new_labeled_production(settings)
    assert len(additions) == 250
    snapshot = retrain.snapshot_data(settings, additions, reason="test")
    workspace = retrain.RetrainWorkspace(tmp_path / "retrain")
    retrain.prepare_snapshot(settings, snapshot.manifest, workspace)
    retrain.train_challenger(settings, workspace, snapshot.data_version, alias_uri(settings.model_name), "test")
    healed = str(workspace.model)
    v2 = load_monitored(settings, healed)
    assert 20 <= len(v2.reference) < 250  # its held-out production images: the traffic it was adapted to

    # The same camera, images neither model saw: no new alert.
    log_traffic(settings, v2.model, corrupt(images[250:450], *DRIFT, seed=2))
    same = run_monitor(settings, healed, performance=False)
    assert same.status == "ok" and same.alert is None, same.message

    # A different shift still alerts.
    log_traffic(settings, v2.model, corrupt(images[250:450], "rotation", 2, seed=3))
    other = run_monitor(settings, healed, performance=False)
    assert other.status == "drift" and other.alert is not None, other.message
