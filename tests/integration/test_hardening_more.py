"""Hardening (issue 13, the items left open): crash windows, stale leases, hostile manifests, hot swaps."""

from __future__ import annotations

import pytest

from visionloop.config import Settings
from visionloop.contracts import CHAMPION
from visionloop.models.registry import alias_version, model_version, move_champion, registry_lock
from visionloop.promotion import audit
from visionloop.promotion.promote import register_run


class Killed(RuntimeError):
    """Stands for the job dying at this point."""


def _die(*_args: object, **_kwargs: object) -> None:
    raise Killed("the job died here")


def test_a_promotion_killed_between_the_alias_move_and_its_record_is_recorded_later(trained_copy, monkeypatch):
    settings = Settings.load(trained_copy.root, {"registry": {"model_name": "t-journal",
                                                              "min_quality": {"metric": "accuracy", "threshold": 0.0}}})
    run_id = model_version(trained_copy, "1").run_id
    with monkeypatch.context() as patch:  # the record is never logged: the job "dies" right after the move
        patch.setattr("visionloop.promotion.promote.record_decision", _die, raising=False)
        patch.setattr(audit, "record_decision", _die)
        with pytest.raises(Killed):
            register_run(settings, run_id, {"accuracy": 0.9, "macro_f1": 0.9}, trigger="test")
    assert alias_version(settings, CHAMPION) == "1"  # the move happened

    records = audit.history(settings)  # the next registry operation finishes the journal
    assert [(r.decision, r.to_version, r.trigger) for r in records] == [("initial", "1", "test")]
    assert [(r.decision, r.to_version) for r in audit.history(settings)] == [("initial", "1")]  # once only


def test_a_journaled_move_that_never_happened_leaves_no_record(trained_copy):
    settings = trained_copy
    before = audit.history(settings)
    record = before[0].__class__(model_name=settings.model_name, decision="assigned", from_version="1",
                                 to_version="7", candidate_version="7", reason="never happened", trigger="test")
    with registry_lock(settings), pytest.raises(Killed):
        audit.record_move(settings, record, lambda: _die())  # died before the alias moved
    assert [r.created_at for r in audit.history(settings)] == [r.created_at for r in before]
    with registry_lock(settings):
        assert audit.finish_pending(settings) is None  # the journal is gone
    move_champion(settings, "1")


def test_a_manifest_cannot_pull_files_from_outside_its_folder_into_the_quarantine(tmp_path):
    import csv

    import numpy as np

    from visionloop.data.prepare import prepare
    from visionloop.store.records import save_png

    source, secret = tmp_path / "source", tmp_path / "elsewhere" / "secret.png"
    source.mkdir()
    secret.parent.mkdir()
    save_png(np.full((8, 8), 200, dtype=np.uint8), secret)
    for i in range(4):
        save_png(np.full((8, 8), i * 40, dtype=np.uint8), source / f"ok{i}.png")
    (source / "link.png").symlink_to(secret)
    rows = [f"ok{i}.png,{i % 2}" for i in range(4)] + ["../elsewhere/secret.png,1", f"{secret},0", "link.png,1"]
    (source / "data.csv").write_text("path,label\n" + "\n".join(rows) + "\n")

    prepared = prepare(source / "data.csv", tmp_path / "out", channels=1, min_side=4, max_pixels=10_000,
                       val_fraction=0.25, test_fraction=0.25, seed=0)
    with prepared.quarantine_path.open() as handle:
        quarantine = list(csv.DictReader(handle))
    assert [row["code"] for row in quarantine] == ["outside_root"] * 3
    assert all(row["copy"] == "" and "outside the source's folder" in row["reason"] for row in quarantine)
    assert not any((tmp_path / "out" / "quarantine").iterdir())  # nothing from outside was copied in
    assert len(prepared.report) and prepared.n_quarantined == 3 and len(prepared.classes) == 2
