"""Batch inference on real digit images with a briefly trained model: outputs, bad files, resume, shards, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.models import DigitsCNN
from helpers.project import REPO, VENV_BIN
from PIL import Image

from visionloop.batch.inputs import list_inputs, shard_inputs
from visionloop.batch.output import OutputConflict, OutputLayout, read_output
from visionloop.batch.predict import BatchOptions, predict_batch
from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.models.tracking import point_mlflow_at

OPTIONS = BatchOptions.from_params(Settings.load(REPO).params)  # params.yaml's, varied per test by options()
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def model(digits: DigitsCNN) -> ServableModel:
    return ServableModel.from_dir(digits.bundle, name="digits-test", version="1")


def options(**changes: int) -> BatchOptions:
    """params.yaml's batch options with a test's batch and part sizes."""
    return replace(OPTIONS, **changes)


def write_digits(folder: Path, digits: DigitsCNN, n: int, start: int = 0) -> dict[str, int]:
    """``folder/<label>/<i>.png`` for held-out digits; returns key → true label."""
    keys = {}
    for i in range(start, start + n):
        label = digits.labels[i % len(digits.labels)]
        path = folder / str(label) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[i % len(digits.images)]).save(path)
        keys[path.relative_to(folder).as_posix()] = label
    return keys


def test_outputs_match_the_model_on_real_digits(tmp_path: Path, digits: DigitsCNN, model: ServableModel) -> None:
    truth = write_digits(tmp_path / "in", digits, 120)
    out = tmp_path / "out"
    summary = predict_batch(model, tmp_path / "in", out, options(batch_size=16, part_size=50), progress=False)
    assert (summary.total, summary.ok, summary.errors, summary.skipped, summary.parts) == (120, 120, 0, 0, 3)
    assert [p.name for p in OutputLayout(out).parts()] == [f"part-s000of001-{i:06d}.parquet" for i in range(3)]
    rows = pd.read_parquet(out)  # the folder is a Parquet dataset
    assert list(rows.columns) == ["path", "label", "confidence", *[f"prob_{c}" for c in CLASSES],
                                  "status", "error", "error_code", "model_name", "model_version"]
    assert list(rows["path"]) == sorted(truth) and rows["path"].is_unique
    assert set(rows["status"]) == {"ok"} and rows["error"].isna().all()
    assert set(rows["model_name"]) == {"digits-test"} and set(rows["model_version"]) == {"1"}
    # The same numbers as the model's own predict on the same pixels.
    order = [int(Path(k).stem) for k in rows["path"]]
    expected = model.predict([digits.images[i] for i in order]).probabilities
    probabilities = rows[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert list(rows["label"]) == [CLASSES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(rows["confidence"], expected.max(axis=1), atol=1e-5)
    accuracy = np.mean([int(label) == truth[key] for key, label in zip(rows["path"], rows["label"], strict=True)])
    assert accuracy >= 0.85, accuracy


def test_listing_leaves_out_hidden_files_and_the_output_even_through_a_symlink(tmp_path: Path) -> None:
    source = tmp_path / "in"
    for key in ("a.png", "sub/b.png", "sub/deeper/c.png", ".hidden.png", ".cache/d.png"):
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(b"x")
    output = source / "preds.parquet"  # an output written inside its own input folder
    output.write_bytes(b"x")
    OutputLayout(output).parts_dir.mkdir()
    (OutputLayout(output).parts_dir / "part.parquet").write_bytes(b"x")
    (source / "sub" / "link-to-output.parquet").symlink_to(output)
    (source / "sub" / "link-to-a.png").symlink_to(source / "a.png")
    layout = OutputLayout(output)
    assert list_inputs(source, exclude=[layout.output, layout.parts_dir]) == [
        "a.png", "sub/b.png", "sub/deeper/c.png", "sub/link-to-a.png"
    ]
    assert "preds.parquet" in list_inputs(source)  # nothing excluded unless asked


def test_bad_files_cost_their_row_not_the_job(tmp_path: Path, digits: DigitsCNN, model: ServableModel) -> None:
    source = tmp_path / "in"
    good = write_digits(source / "good", digits, 20)
    png = (source / "good" / next(iter(good))).read_bytes()
    (source / "bad").mkdir()
    (source / "bad" / "truncated.png").write_bytes(png[: len(png) // 2])
    (source / "bad" / "notes.txt").write_text("not an image\n")
    (source / "bad" / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(source / "bad" / "tiny.png")
    (source / ".DS_Store").write_bytes(b"\0\1")  # hidden: not an input
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        list_inputs(tmp_path / "empty")
    out = tmp_path / "preds.parquet"
    summary = predict_batch(model, source, out, options(batch_size=8, part_size=10), progress=False)
    assert (summary.ok, summary.errors) == (20, 4)
    assert summary.error_codes == {"corrupt": 1, "not_an_image": 1, "empty": 1, "too_small": 1}
    assert summary.consolidated_rows == 24 and out.is_file()
    assert not OutputLayout(out).parts_dir.exists()  # consolidated into the one file
    rows = pd.read_parquet(out).set_index("path")
    assert len(rows) == 24 and (rows.loc[[f"good/{k}" for k in good], "status"] == "ok").all()
    errors = rows[rows["status"] == "error"]
    assert dict(errors["error_code"]) == {"bad/truncated.png": "corrupt", "bad/notes.txt": "not_an_image",
                                          "bad/empty.png": "empty", "bad/tiny.png": "too_small"}
    assert errors["label"].isna().all() and errors["prob_0"].isna().all() and errors["confidence"].isna().all()
    assert "0 bytes" in errors.loc["bad/empty.png", "error"]
    assert "at least 8 pixels" in errors.loc["bad/tiny.png", "error"]


def test_manifest_carries_labels_and_metadata(tmp_path: Path, digits: DigitsCNN, model: ServableModel) -> None:
    images = tmp_path / "images"
    truth = write_digits(images, digits, 12)
    lines = ["path,label,site"] + [f"images/{k},{v},site-{i % 2}" for i, (k, v) in enumerate(truth.items())]
    lines += ["images/missing.png,3,site-9", f"images/{next(iter(truth))},0,duplicate"]
    manifest = tmp_path / "batch.csv"
    manifest.write_text("\n".join(lines) + "\n")
    assert list_inputs(manifest) == [f"images/{k}" for k in truth] + ["images/missing.png"]
    summary = predict_batch(model, manifest, tmp_path / "out", options(batch_size=5), progress=False)
    assert (summary.ok, summary.errors, summary.error_codes) == (12, 1, {"missing_file": 1})
    rows = read_output(tmp_path / "out").set_index("path")
    assert list(rows.columns[-2:]) == ["true_label", "site"]
    assert rows.loc["images/missing.png", "status"] == "error"
    assert rows.loc["images/missing.png", "site"] == "site-9"
    first = f"images/{next(iter(truth))}"
    assert rows.loc[first, "site"] == "site-0" and rows.loc[first, "true_label"] == str(truth[first[7:]])


def test_rerun_skips_what_is_done_and_adds_only_new_inputs(
    tmp_path: Path, digits: DigitsCNN, model: ServableModel
) -> None:
    source, out = tmp_path / "in", tmp_path / "preds.parquet"
    write_digits(source, digits, 30)
    first = predict_batch(model, source, out, options(batch_size=8, part_size=8), progress=False)
    again = predict_batch(model, source, out, options(batch_size=8, part_size=8), progress=False)
    assert (first.ok, again.ok, again.skipped, again.parts) == (30, 0, 30, 0)
    write_digits(source, digits, 5, start=30)
    more = predict_batch(model, source, out, options(batch_size=8, part_size=8), progress=False)
    assert (more.ok, more.skipped, more.consolidated_rows) == (5, 30, 35)
    rows = pd.read_parquet(out)
    assert len(rows) == 35 and rows["path"].is_unique
    # Another model version never writes into this output.
    other = ServableModel.from_dir(digits.bundle, name="digits-test", version="2")
    with pytest.raises(OutputConflict, match="digits-test v1"):
        predict_batch(other, source, out, options(batch_size=8), progress=False)


def test_shards_split_stably_and_add_up_to_one_run(tmp_path: Path, digits: DigitsCNN, model: ServableModel) -> None:
    source = tmp_path / "in"
    write_digits(source, digits, 40)
    keys = list_inputs(source)
    shards = shard_inputs(keys, 3)
    assert sorted(k for s in shards for k in s) == keys and all(s == sorted(s) for s in shards)
    assert all(len(s) >= 5 for s in shards)  # roughly balanced
    # A key stays in its shard whatever else is listed (no duplicates if the folder changes mid-job).
    grown = shard_inputs(["0/zzz.png", *keys], 3)
    assert all(set(old) <= set(new) for old, new in zip(shards, grown, strict=True))

    out = tmp_path / "sharded.parquet"
    halves = [predict_batch(model, source, out, options(batch_size=8, part_size=8), shard=(i, 2), progress=False)
              for i in range(2)]
    assert sum(h.ok for h in halves) == 40 and not out.exists()  # shards never consolidate
    assert {p.name[:15] for p in OutputLayout(out).parts()} == {"part-s000of002-", "part-s001of002-"}
    final = predict_batch(model, source, out, options(batch_size=8), progress=False)
    assert (final.ok, final.skipped, final.consolidated_rows) == (0, 40, 40)
    single = predict_batch(model, source, tmp_path / "single", options(batch_size=8), progress=False)
    assert single.ok == 40
    a = pd.read_parquet(out).sort_values("path").reset_index(drop=True)
    b = read_output(tmp_path / "single").sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, atol=1e-5)


def test_killed_mid_way_then_rerun_gives_every_image_exactly_once(
    tmp_path: Path, digits: DigitsCNN, model: ServableModel
) -> None:
    """`visionloop predict-batch` in a subprocess, SIGKILLed after some parts; the rerun finishes the job."""
    source, out = tmp_path / "in", tmp_path / "out"
    truth = write_digits(source, digits, 1200)
    (source / "junk.txt").write_text("not an image")
    db = tmp_path / "predictions.db"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "VISIONLOOP_STATE_DIR": str(tmp_path / "state"), "VISIONLOOP_DB_URL": f"sqlite:///{db}",
           "OMP_NUM_THREADS": "1"}  # small batches on 2 busy cores: one intra-op thread is many times faster
    command = [str(VENV_BIN / "visionloop"), "predict-batch", str(source), "--output", str(out),
               "--bundle", str(digits.bundle), "--batch-size", "8", "--part-size", "16", "--log-predictions",
               "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(OutputLayout(out).parts()) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert still_running, f"the job ended before it could be killed: {stderr.decode()[-2000:]}"
    committed = len(OutputLayout(out).parts())
    assert 3 <= committed < 1201 // 16, committed
    (out / ".part-s000of001-999999.tmp").write_bytes(b"PAR1 half a part")  # as if killed mid-write
    before = pd.read_parquet(out)  # readers see only committed parts
    assert before["path"].is_unique and len(before) == 16 * committed

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{1201 - 16 * committed} predicted" in rerun.stdout and f"{16 * committed} already done" in rerun.stdout
    rows = read_output(out)
    assert len(rows) == 1201 and rows["path"].is_unique and set(rows["path"]) == {*truth, "junk.txt"}
    assert rows.set_index("path").loc["junk.txt", "error_code"] == "not_an_image"
    assert not list(out.glob(".*.tmp")), "no temporary part is left after a clean run"
    # The prediction log holds each ok prediction once, although the first run died after logging some.
    from visionloop.store.predlog import PredictionLog

    plog = PredictionLog(f"sqlite:///{db}")
    logged = plog.read_window()
    plog.dispose()
    assert len(logged) == 1200 and logged["id"].is_unique and set(logged["source"]) == {"batch"}
    assert set(logged["image_path"]) == {str((source / k).resolve()) for k in truth}
    assert {"brightness", "contrast"} <= set(logged.columns)
    # Same answers as an uninterrupted in-process run.
    clean = predict_batch(model, source, tmp_path / "clean", options(batch_size=64), progress=False)
    assert clean.ok == 1200
    a = rows.sort_values("path").reset_index(drop=True)
    b = read_output(tmp_path / "clean").sort_values("path").reset_index(drop=True)
    np.testing.assert_allclose(a.filter(like="prob_").to_numpy(dtype=float),
                               b.filter(like="prob_").to_numpy(dtype=float), atol=1e-5)
    assert list(a["label"]) == list(b["label"])


def test_cli_shards_then_consolidates(tmp_path: Path, digits: DigitsCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from visionloop.cli.main import app

    monkeypatch.setenv("VISIONLOOP_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "in"
    write_digits(source, digits, 24)
    output = str(tmp_path / "{model}-{version}.parquet")
    base = ["predict-batch", str(source), "--output", output, "--bundle", str(digits.bundle), "--no-progress",
            "--batch-size", "8"]
    runner = CliRunner()
    shard_counts = []
    for shard in ("0/2", "1/2"):
        result = runner.invoke(app, [*base, "--shard", shard])
        assert result.exit_code == 0, result.output
        shard_counts.append(int(result.output.split(": ", 1)[1].split(" predicted")[0]))
    assert sum(shard_counts) == 24
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    assert "0 predicted" in result.output and "24 already done" in result.output
    written = list(tmp_path.glob("local-sha256-*.parquet"))
    assert len(written) == 1 and len(pd.read_parquet(written[0])) == 24
    bad = runner.invoke(app, [*base, "--shard", "2/2"])
    assert bad.exit_code != 0 and "0 <= I < N" in bad.output
    missing = runner.invoke(app, ["predict-batch", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x"),
                                  "--bundle", str(digits.bundle)])
    assert missing.exit_code == 1 and "does not exist" in missing.output


@pytest.mark.e2e
def test_flow_with_two_shards_matches_the_single_process_call(tmp_path: Path, digits: DigitsCNN) -> None:
    """The Prefect flow (local mode) on the registry's champion: 2 parallel shards, then consolidation."""
    import mlflow
    import yaml
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from flows.batch_inference import batch_inference
    from visionloop.batch.model import load_model

    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    settings = Settings.load(project)
    name = yaml.safe_load((REPO / "params.yaml").read_text())["registry"]["model_name"]
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiment = client.create_experiment("batch-test", artifact_location=(tmp_path / "artifacts").as_uri())
    point_mlflow_at(settings.tracking_uri)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(digits.bundle / "bundle"), "bundle")
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id).version
    client.set_registered_model_alias(name, "champion", version)

    source = tmp_path / "in"
    write_digits(source, digits, 60)
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    state = batch_inference(str(source), str(tmp_path / "flow-v{version}.parquet"), shards=2,
                            project_dir=str(project), return_state=True)
    result = state.result()
    with get_client(sync_client=True) as prefect:
        run_tags = prefect.read_flow_run(state.state_details.flow_run_id).tags
    assert {f"model:{name}", f"model_version:{name}/{version}"} <= set(run_tags)
    output = tmp_path / f"flow-v{version}.parquet"
    assert result["output"] == str(output) and result["model_version"] == str(version)
    assert [s["shard"] for s in result["shards"]] == [(0, 2), (1, 2)]
    assert all(s["total"] > 0 for s in result["shards"])
    assert (result["ok"], result["errors"], result["rows"]) == (60, 1, 61)

    model = load_model(settings, f"models:/{name}@champion")
    predict_batch(model, source, tmp_path / "single", options(batch_size=32), progress=False)
    a = pd.read_parquet(output).sort_values("path").reset_index(drop=True)
    b = read_output(tmp_path / "single").sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, atol=1e-5)
    assert set(a["model_version"]) == {str(version)}


def test_scheduled_run_without_input_has_nothing_to_do(make_project) -> None:
    """The nightly schedule on a fresh project (no data/incoming, no champion yet): a completed run saying so."""
    from flows.batch_inference import batch_inference

    settings = Settings.load(make_project())
    batch = settings.params.batch
    assert not settings.path(batch.input_dir).exists()
    state = batch_inference(batch.input_dir, batch.output_dir, project_dir=str(settings.root), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["status"] == "nothing_to_do" and result["rows"] == 0 and "does not exist" in result["message"]
    settings.path(batch.input_dir).mkdir(parents=True)  # an empty folder is nothing to do as well
    assert batch_inference(batch.input_dir, batch.output_dir, project_dir=str(settings.root))["total"] == 0
