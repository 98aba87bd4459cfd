"""Drift checks: calibrated false alarms, detection, degenerate columns, Evidently agreement, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.models import save_bundle, tiny_model
from helpers.project import REPO
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from visionloop.contracts import FeatureTest
from visionloop.monitoring.drift import (
    CHI2,
    CONSTANT,
    KS,
    DriftThresholds,
    choose_tests,
    feature_test,
    make_verdict,
    run_drift_tests,
    verdict_json,
)
from visionloop.monitoring.evidently_report import (
    check_drift,
    drift_report,
    evidence,
    evidently_column_results,
    evidently_dataset_drift,
    save_report_html,
    shown_features,
)
from visionloop.monitoring.reports import embedding_outliers

LABELS = list("abcdefghij")
# The rule's numbers as tests state them (params.yaml's values may change without changing the rule).
THRESHOLDS = DriftThresholds(alpha=0.05, critical_share=0.3, critical_distance=0.5)


def features(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    """Synthetic monitoring features like the real ones: 20 columns, correlated, ties, constants, a label."""
    z = rng.normal(size=(n, 4))
    frame = {f"emb_{i}": z[:, i] + (shift if i == 0 else 0.0) for i in range(4)}
    frame["brightness"] = rng.beta(2, 5, n)
    frame["contrast"] = 0.5 * frame["brightness"] + rng.gamma(2, 0.05, n)
    frame["sharpness"] = rng.lognormal(-5, 0.3, n)
    frame["entropy"] = np.round(rng.normal(3, 0.5, n), 1)  # discrete: many ties
    frame["colourfulness"] = np.zeros(n)  # grayscale
    frame["width"] = np.full(n, 32.0)
    frame["height"] = np.full(n, 32.0)
    frame["aspect"] = np.ones(n)
    logits = rng.normal(size=(n, 10)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame["pred_label"] = np.array(LABELS, dtype=object)[probabilities.argmax(axis=1)]
    frame["confidence"] = probabilities.max(axis=1)
    for j, label in enumerate(LABELS[:6]):
        frame[f"prob_{label}"] = probabilities[:, j]
    return pd.DataFrame(frame)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    # Above 1,000 rows, where Evidently would switch to Wasserstein unless told otherwise.
    return features(1500, np.random.default_rng(0))


def test_choose_tests(reference: pd.DataFrame) -> None:
    tests = choose_tests(reference, list(reference.columns))
    assert len(tests) == 20
    assert tests["pred_label"] == CHI2
    assert {tests[c] for c in ("width", "height", "aspect", "colourfulness")} == {CONSTANT}
    assert tests["emb_0"] == tests["entropy"] == tests["confidence"] == KS


def test_false_alarm_rate_is_at_most_alpha(reference: pd.DataFrame) -> None:
    """Batches drawn from the reference distribution: the family-wise rate stays ≤ 5 %.

    200 windows of 50 must alarm at most 5 % of the time; the shorter runs at 20 and 200 rows must
    be consistent with a rate ≤ 5 % (one-sided binomial test at 1 %: 50 runs can't pin a rate down).
    """
    rng = np.random.default_rng(1)
    for n, runs in ((50, 200), (20, 50), (200, 50)):
        verdicts = [run_drift_tests(reference, features(n, rng), THRESHOLDS) for _ in range(runs)]
        alarms = sum(v.drift for v in verdicts)
        if n == 50:
            assert alarms / runs <= 0.05, f"false-alarm rate {alarms / runs:.3f} at n={n}"
            # Without the correction (any p < alpha) the same batches alarm far more often.
            uncorrected = np.mean([min(f.p_value for f in v.features) < 0.05 for v in verdicts])
            assert uncorrected > 0.3, uncorrected
        else:
            assert stats.binomtest(alarms, runs, 0.05, alternative="greater").pvalue > 0.01, (n, alarms)
        assert all(v.severity == "none" for v in verdicts if not v.drift)


def test_strong_shifts_are_detected(reference: pd.DataFrame) -> None:
    rng = np.random.default_rng(2)
    shifted = run_drift_tests(reference, features(50, rng, shift=1.5), THRESHOLDS)
    assert shifted.drift and "emb_0" in shifted.drifted_features

    # A corruption (darker, lower contrast, blurred): several image statistics move at once.
    corrupted = features(50, rng)
    corrupted["brightness"] *= 0.5
    corrupted["contrast"] *= 0.5
    corrupted["sharpness"] *= 0.2
    verdict = run_drift_tests(reference, corrupted, THRESHOLDS)
    assert {"brightness", "contrast", "sharpness"} <= set(verdict.drifted_features)
    assert verdict.severity == "critical"

    # Label shift: the model now predicts one class only.
    one_class = features(50, rng)
    one_class["pred_label"] = "c"
    assert "pred_label" in run_drift_tests(reference, one_class, THRESHOLDS).drifted_features


def test_constant_columns_do_not_false_alarm_but_a_changed_constant_drifts(reference: pd.DataFrame) -> None:
    rng = np.random.default_rng(3)
    same = run_drift_tests(reference, features(50, rng), THRESHOLDS)
    for f in same.features:
        if f.feature in ("width", "height", "aspect", "colourfulness"):
            assert (f.test, f.p_value, f.statistic, f.drifted) == (CONSTANT, 1.0, 0.0, False)

    resized = features(50, rng)
    resized["width"] = 64.0
    resized["aspect"] = 2.0
    verdict = run_drift_tests(reference, resized, THRESHOLDS)
    assert {"width", "aspect"} <= set(verdict.drifted_features)
    assert verdict.severity == "critical"  # the whole distribution moved: distance 1

    # Two odd images in 50: Fisher's exact p is the hypergeometric tail, 50·49 / (1550·1549).
    two_odd = features(50, rng)
    two_odd.loc[:1, "width"] = 28.0
    distance, p_value = feature_test(CONSTANT, reference["width"], two_odd["width"])
    assert distance == pytest.approx(2 / 50)
    assert p_value == pytest.approx(50 * 49 / (1550 * 1549))


def test_sparse_categories_are_pooled_and_the_test_is_two_sample() -> None:
    rng = np.random.default_rng(4)
    # One reference row of a rare class; the current window happens to contain one too.
    reference = pd.Series([*rng.choice(LABELS, 1499), "rare"])
    current = pd.Series([*rng.choice(LABELS, 49), "rare"])
    _, p_value = feature_test(CHI2, reference, current)
    assert p_value > 0.05
    # A goodness-of-fit test against the reference shares (Evidently's "chisquare") would alarm.
    keys = sorted(set(reference) | set(current))
    expected = np.array([(reference == k).sum() for k in keys]) * len(current) / len(reference)
    observed = np.array([(current == k).sum() for k in keys])
    assert stats.chisquare(observed, expected).pvalue < 0.05 / 20

    # Windows as large as the reference: the two-sample test keeps its level, goodness-of-fit doesn't.
    ours, goodness_of_fit = [], []
    for _ in range(300):
        ref, cur = pd.Series(rng.choice(LABELS[:5], 200)), pd.Series(rng.choice(LABELS[:5], 200))
        ours.append(feature_test(CHI2, ref, cur)[1] < 0.05)
        counts = [(cur == k).sum() for k in LABELS[:5]], [(ref == k).sum() for k in LABELS[:5]]
        goodness_of_fit.append(stats.chisquare(*counts).pvalue < 0.05)
    assert np.mean(ours) <= 0.08 and np.mean(goodness_of_fit) > 0.2


def test_severity_rule() -> None:
    def verdict(*specs: tuple[bool, float]):
        tests = [FeatureTest(f"f{i}", KS, d, 0.5, 0.01, drifted) for i, (drifted, d) in enumerate(specs)]
        return make_verdict(tests, THRESHOLDS, n_reference=100, n_current=50)

    quiet = [(False, 0.1)] * 7
    assert verdict(*quiet).severity == "none" and not verdict(*quiet).drift
    assert verdict((True, 0.3), *quiet).severity == "warning"  # 1/8 drifted, moderate distance
    assert verdict((True, 0.6), *quiet).severity == "critical"  # one feature moved a lot
    assert verdict((True, 0.3), (True, 0.3), (True, 0.3), *quiet[:5]).severity == "critical"  # 3/8 ≥ 0.3
    assert verdict((True, 0.3), *quiet).share_drifted == pytest.approx(1 / 8)


# --- Evidently -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evidently_runs(reference: pd.DataFrame):
    rng = np.random.default_rng(5)
    same = features(200, rng)
    shifted = features(50, rng, shift=1.5)
    shifted["width"] = 64.0
    return {
        "same": (same, *check_drift(reference, same, THRESHOLDS, model_name="digits-cnn", model_version="3")),
        "shifted": (shifted, *check_drift(reference, shifted, THRESHOLDS)),
    }


def test_verdict_agrees_with_evidently(reference: pd.DataFrame, evidently_runs) -> None:
    for name, (current, verdict, snapshot) in evidently_runs.items():
        fast = run_drift_tests(reference, current, THRESHOLDS)
        columns = evidently_column_results(snapshot)
        assert set(columns) == {f.feature for f in shown_features(verdict)}
        for from_report, computed in zip(verdict.features, fast.features, strict=True):
            if from_report.feature not in columns:
                continue
            method, p_value, drifted = columns[from_report.feature]
            assert method == computed.test == from_report.test  # ks even with a 1,500-row reference
            assert p_value == pytest.approx(computed.p_value, rel=1e-9, abs=1e-300)
            assert drifted == computed.drifted == from_report.drifted
            assert from_report.statistic == pytest.approx(computed.statistic)
            assert from_report.threshold == pytest.approx(0.05 / 20)
        assert verdict.drift == fast.drift == evidently_dataset_drift(snapshot), name
        assert verdict.severity == fast.severity
    assert not evidently_runs["same"][1].drift
    assert {"emb_0", "width"} <= set(evidently_runs["shifted"][1].drifted_features)


def test_report_thresholds_read_as_evidence_not_rounded_p_values(evidently_runs) -> None:
    """A per-test threshold of 0.05 / 20 = 0.0025 printed by Evidently with two decimals read "0.00";
    the report scores -log10(p) against -log10(0.0025) = 2.60."""
    for _, verdict, snapshot in evidently_runs.values():
        descriptions = {
            t["metric_config"]["params"]["column"]: t["description"]
            for t in snapshot.dict()["tests"]
            if t["metric_config"]["params"].get("type", "").endswith(":ValueDrift")
        }
        assert descriptions
        for f in shown_features(verdict):
            text = descriptions[f.feature]
            assert "threshold is 2.60" in text and "-log10(p-value)" in text, text
            assert f"Drift score is {evidence(f.p_value):0.2f}" in text
        assert not any("threshold is 0.00" in text for text in descriptions.values())


def test_report_leaves_out_unchanged_constants_and_puts_the_strongest_evidence_first(evidently_runs) -> None:
    constants = {"width", "height", "aspect", "colourfulness"}
    _, same_verdict, same = evidently_runs["same"]
    assert not constants & set(evidently_column_results(same))
    assert constants <= {f.feature for f in same_verdict.features}  # still tested by the verdict
    assert "width" in same.to_snapshot_model().metadata["not_shown"]
    _, verdict, shifted = evidently_runs["shifted"]
    order = [m["config"]["column"] for m in shifted.dict()["metrics"] if m["config"]["type"].endswith(":ValueDrift")]
    assert set(order) == set(evidently_column_results(shifted)) and "width" in order  # a changed constant shows
    p_values = {f.feature: f.p_value for f in verdict.features}
    assert [p_values[c] for c in order] == sorted(p_values[c] for c in order)
    assert order[0] in {"emb_0", "width"}


def test_workspace_dashboard_charts_severity_version_and_top_features(evidently_runs, tmp_path: Path) -> None:
    """The dashboard's panels name metrics the snapshots hold (what Evidently's series match on)."""
    from evidently.ui.workspace import Workspace

    from visionloop.monitoring.evidently_report import SEVERITY_COLUMN, VERSION_COLUMN, refresh_dashboard, top_features

    _, verdict, snapshot = evidently_runs["same"]
    workspace = Workspace.create(str(tmp_path / "evidently"))
    project = workspace.create_project("digits-cnn")
    workspace.add_run(project.id, snapshot, include_data=False)
    refresh_dashboard(project, top_features(snapshot))
    (stored,) = Workspace.create(str(tmp_path / "evidently")).search_project("digits-cnn")
    panels = stored.dashboard.model().panels
    titles = " | ".join(p.title for p in panels)
    assert "Severity" in titles and "Model version" in titles and "Top features" in titles
    metrics = snapshot.dict()["metrics"]

    def value_of(metric: str, labels: dict[str, str]) -> object:
        """The value a series with these labels reads (``value_type`` picks a field of a several-value metric)."""
        config = {k: v for k, v in labels.items() if k != "value_type"}
        (match,) = [
            m["value"] for m in metrics if m["config"]["type"] == metric and config.items() <= m["config"].items()
        ]
        return match[labels["value_type"]] if "value_type" in labels else match

    for panel in panels:
        for value in panel.values:
            value_of(value.metric, value.metric_labels)  # exactly one metric in the snapshot feeds each series
    mean = "evidently:metric_v2:MeanValue"
    assert value_of(mean, {"column": SEVERITY_COLUMN}) == 0 and verdict.severity == "none"
    assert value_of(mean, {"column": VERSION_COLUMN}) == 3
    assert top_features(snapshot) == [f.feature for f in shown_features(verdict)][:5]
    assert {"severity none", "model v3"} <= set(snapshot.to_snapshot_model().tags)


def test_a_report_that_disagrees_with_the_verdict_is_refused(reference: pd.DataFrame, evidently_runs) -> None:
    """The report shows the verdict computed once with scipy; Evidently's own run of the tests must agree."""
    current, verdict, _ = evidently_runs["shifted"]
    flipped = [replace(f, drifted=not f.drifted) if f.feature == "emb_0" else f for f in verdict.features]
    with pytest.raises(RuntimeError, match="emb_0"):
        drift_report(reference, current, replace(verdict, features=flipped))


def test_verdict_json_has_the_documented_fields(evidently_runs) -> None:
    _, verdict, _ = evidently_runs["same"]
    data = json.loads(verdict_json(verdict))
    assert {
        "drift",
        "severity",
        "share_drifted",
        "drifted_features",
        "features",
        "alpha",
        "n_reference",
        "n_current",
        "model_name",
        "model_version",
        "window_start",
        "window_end",
        "created_at",
    } <= set(data)
    assert (data["model_name"], data["model_version"], data["n_current"]) == ("digits-cnn", "3", 200)
    assert data["severity"] in ("none", "warning", "critical")
    feature = data["features"][0]
    assert set(feature) == {"feature", "test", "statistic", "p_value", "threshold", "drifted"}
    assert isinstance(feature["p_value"], float) and isinstance(feature["drifted"], bool)


def test_html_report(evidently_runs, tmp_path: Path) -> None:
    _, _, snapshot = evidently_runs["shifted"]
    path = save_report_html(snapshot, tmp_path / "deep" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size > 100_000 and "<html" in text.lower()
    assert "emb_0" in text


def test_embedding_outliers() -> None:
    rng = np.random.default_rng(6)
    reference = pd.DataFrame(rng.normal(size=(300, 3)), columns=["emb_0", "emb_1", "emb_2"])
    current = pd.DataFrame(rng.normal(size=(40, 3)), columns=reference.columns)
    current.loc[[5, 17], "emb_1"] = [12.0, -9.0]
    assert embedding_outliers(reference, current, k=2) == [5, 17]
    assert embedding_outliers(reference[["emb_0"]].rename(columns={"emb_0": "x"}), current, k=2) == []


# --- the CLI ---------------------------------------------------------------------------------------


def write_images(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def digit_like(rng: np.random.Generator, n: int, gain: float = 1.0) -> list[np.ndarray]:
    """Blurry blobs on black, with some spread in brightness: stand-ins for digits."""
    yy, xx = np.mgrid[:32, :32]
    images = []
    for _ in range(n):
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(4, 9)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)) * rng.uniform(150, 255) * gain
        images.append(np.clip(blob + rng.normal(0, 3, blob.shape), 0, 255).astype(np.uint8))
    return images


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("drift-cli")
    return {
        "reference": write_images(root / "reference", digit_like(rng, 120)),
        "same": write_images(root / "same", digit_like(rng, 40)),
        "dark": write_images(root / "dark", digit_like(rng, 40, gain=0.4)),
    }


@pytest.fixture
def cli(monkeypatch, tmp_path_factory):
    from visionloop.cli.main import app

    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(REPO))
    # A registry of its own (empty): the repo's, after `make demo`, would add its champion's features.
    monkeypatch.setenv("VISIONLOOP_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["drift", *map(str, args)])


def test_cli_exit_code_is_zero_with_and_without_drift(cli, folders) -> None:
    same = cli(folders["reference"], folders["same"], "--json")
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["drift"] is False
    dark = cli(folders["reference"], folders["dark"])
    assert dark.exit_code == 0, dark.output
    assert dark.stdout.startswith("drift: yes")
    assert "brightness" in dark.stdout and "constant_fisher" in dark.stdout


def test_cli_with_a_model_bundle_adds_embedding_and_output_features(cli, folders, tmp_path: Path) -> None:
    from visionloop.contracts import BUNDLE_FILES
    from visionloop.data.images import load_image
    from visionloop.monitoring.features import build_reference_profile
    from visionloop.monitoring.folders import list_images

    model = tiny_model(["zero", "one", "two"])
    save_bundle(model, tmp_path)
    files = {key: tmp_path / path for key, path in BUNDLE_FILES.items()}
    expected = {"brightness", "emb_0", "emb_3", "pred_label", "confidence", "prob_two"}

    # Folder against folder; the bundle has no reduction yet, so one is fitted on the reference.
    result = cli(folders["reference"], folders["dark"], "--model", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert expected <= {f["feature"] for f in json.loads(result.stdout)["features"]}

    # The stored profile of a registered bundle against a folder, with the bundle's own reduction.
    images = [load_image(p) for p in list_images(folders["reference"])]
    profile, reduction = build_reference_profile(model, images, n_components=4)
    profile.to_parquet(files["reference_profile"])
    files["embedding_reduction"].write_text(json.dumps(reduction))
    result = cli(files["reference_profile"], folders["same"], "--model", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert expected <= {f["feature"] for f in verdict["features"]}
    assert verdict["n_reference"] == 120 and not verdict["drift"]


def test_cli_forward_pass_runs_on_the_monitoring_torch_threads(cli, folders, tmp_path: Path) -> None:
    """torch's default (a thread per core) is ~3x slower on 2 shared cores: the CLI sets monitoring.torch_threads."""
    import torch

    from visionloop.config import Settings

    wanted = Settings.load().params.monitoring.torch_threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads((wanted or threads) + 1)
        result = cli(folders["reference"], folders["same"], "--model", save_bundle(tiny_model(["a", "b"]), tmp_path),
                     "--json")
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == (wanted or threads + 1)
    finally:
        torch.set_num_threads(threads)


def test_cli_errors_exit_non_zero(cli, folders, tmp_path: Path) -> None:
    missing = cli(tmp_path / "nowhere", folders["same"])
    assert missing.exit_code != 0 and "not a directory" in missing.output
    empty = cli(folders["reference"], write_images(tmp_path / "empty", []))
    assert empty.exit_code != 0 and "no readable image" in empty.output


# What `visionloop drift --json` prints, and the heavy packages it imported (a fresh process, as a user runs it).
IMPORTS_OF_THE_CLI = """
import json, sys
from visionloop.cli.main import app
try:
    app()
finally:
    heavy = ("evidently", "pytorch_lightning", "lightning", "torchmetrics", "torch")
    print(json.dumps(sorted(name for name in heavy if name in sys.modules)), file=sys.stderr)
"""


def drift_in_a_fresh_process(tmp_path: Path, *args: object) -> tuple[dict, list[str]]:
    """The verdict ``visionloop drift ... --json`` prints, and which heavy packages the process imported."""
    env = {**os.environ, "VISIONLOOP_PROJECT_DIR": str(REPO), "VISIONLOOP_STATE_DIR": str(tmp_path / "state")}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_THE_CLI, "drift", *map(str, args), "--json"],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), json.loads(done.stderr.strip().splitlines()[-1])


def test_cli_json_imports_no_evidently_nor_lightning_and_agrees_with_the_report(
    cli, folders, tmp_path: Path
) -> None:
    """`drift --json` computes the verdict with scipy: Evidently (and its report) only with --report,
    Lightning never (inference needs the network, not the training stack), torch only with a model."""
    stats_only, imported = drift_in_a_fresh_process(tmp_path, folders["reference"], folders["dark"], "--stats-only")
    assert imported == [] and stats_only["drift"]

    bundle = save_bundle(tiny_model(["zero", "one", "two"]), tmp_path / "bundle")
    fast, imported = drift_in_a_fresh_process(tmp_path, folders["reference"], folders["dark"], "--model", bundle)
    assert imported == ["torch"]

    html = tmp_path / "report.html"
    with_report = cli(folders["reference"], folders["dark"], "--model", bundle, "--json", "--report", html)
    assert with_report.exit_code == 0, with_report.output
    assert html.stat().st_size > 100_000
    report = json.loads(with_report.stdout)
    assert (fast["drift"], fast["severity"], fast["drifted_features"]) == (
        report["drift"], report["severity"], report["drifted_features"]
    )
    assert fast["drift"] and "brightness" in fast["drifted_features"]
    for a, b in zip(fast["features"], report["features"], strict=True):
        assert (a["feature"], a["test"], a["drifted"]) == (b["feature"], b["test"], b["drifted"])
        assert a["p_value"] == pytest.approx(b["p_value"], rel=1e-9, abs=1e-300)
