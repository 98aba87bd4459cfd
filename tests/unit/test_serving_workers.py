"""What the workers of `serve --workers N` share on disk: the board of versions and the spool's replay claims."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from visionloop.serving.workers import WorkerBoard
from visionloop.store import spool
from visionloop.store.records import PendingFeedback


def test_the_board_lists_live_workers_and_drops_dead_ones(tmp_path: Path) -> None:
    first, second = WorkerBoard(tmp_path), WorkerBoard(tmp_path)
    first.join()
    second.join()
    first.publish("3")
    assert sorted(str(m["model_version"]) for m in second.members()) == ["3", "None"]  # seen from either worker
    # A worker killed without leaving: its file stays, its lock is gone (the kernel dropped it).
    (tmp_path / "999999-dead.json").write_text(json.dumps({"pid": 999999, "model_version": "1", "since": "x"}))
    assert len(first.members()) == 2 and not (tmp_path / "999999-dead.json").exists()
    second.leave()
    assert [m["model_version"] for m in first.members()] == ["3"]
    first.leave()
    assert WorkerBoard(tmp_path).members() == [] and list(tmp_path.iterdir()) == []


def test_a_spool_file_is_replayed_by_one_writer_at_a_time(tmp_path: Path) -> None:
    entry = PendingFeedback("id-1", "7", datetime.now(UTC))
    path = spool.spill(tmp_path, [entry])
    mine: dict[Path, int] = {}
    theirs: dict[Path, int] = {}
    assert spool.load(tmp_path, mine) == [(path, [entry])]
    assert spool.load(tmp_path, theirs) == [] and theirs == {}  # claimed by the first writer
    spool.discard(path, mine)  # written: deleted, claim released
    assert mine == {} and spool.load(tmp_path, theirs) == [] and list(tmp_path.iterdir()) == []
    again = spool.spill(tmp_path, [entry])
    assert spool.load(tmp_path, theirs) == [(again, [entry])]  # a file nobody holds is anyone's
    spool.discard(again, theirs)
