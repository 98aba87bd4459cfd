"""The batch_inference flow on Dask (a LocalCluster of 2 worker processes) against the thread runner."""

from __future__ import annotations

import shutil

import pandas as pd
import sqlalchemy as sa
import yaml

from visionloop.config import Settings
from visionloop.store.schema import predictions_table


def set_runner(settings: Settings, runner: str) -> None:
    """Switch ``batch.runner`` in the project's params.yaml (the flow reads it at start)."""
    path = settings.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["batch"].update(runner=runner, shards=2, part_size=16, log_predictions=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_dask_shards_write_what_threads_write_exactly_once(trained_copy: Settings) -> None:
    from flows.batch_inference import batch_inference

    settings = trained_copy
    source = settings.root / "incoming"
    files = sorted(settings.path(settings.params.data.prepared_dir).rglob("*.png"))[:80]
    for i, file in enumerate(files):
        (source / f"{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(file, source / f"{i % 3}" / f"{i:03d}.png")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    set_runner(settings, "threads")
    threads = batch_inference(str(source), str(settings.root / "threads"), project_dir=str(settings.root))
    set_runner(settings, "dask")
    dask = batch_inference(str(source), str(settings.root / "dask"), project_dir=str(settings.root))

    assert [s["shard"] for s in dask["shards"]] == [(0, 2), (1, 2)] and all(s["total"] for s in dask["shards"])
    assert (dask["ok"], dask["errors"], dask["rows"]) == (threads["ok"], threads["errors"], threads["rows"]) == (
        80, 1, 81)
    a = pd.read_parquet(settings.root / "dask").sort_values("path").reset_index(drop=True)
    b = pd.read_parquet(settings.root / "threads").sort_values("path").reset_index(drop=True)
    assert a["path"].is_unique and len(a) == 81
    pd.testing.assert_frame_equal(a, b, atol=1e-5)
    assert dask["logged"] == threads["logged"] == 80  # each run logs its own output's rows, once
    engine = sa.create_engine(settings.db_url)
    with engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(predictions_table)
                                   .where(predictions_table.c.source == "batch")).scalar_one()
    engine.dispose()
    assert count == 160  # 80 per output (ids derive from the output), none twice
