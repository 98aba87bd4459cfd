"""Suspected label errors: the confident-learning finder on digits with known flipped labels, and the
review decisions applied as a new DVC data version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.images import write_tiny_source
from helpers.models import tiny_model
from helpers.project import REPO, run
from sklearn.datasets import load_digits

from visionloop.config import Settings
from visionloop.labeling.confident_learning import find_label_issues, out_of_fold_probabilities
from visionloop.labeling.review import CONFIRMED, CORRECTED, ReviewStore, apply_corrections, undecided
from visionloop.labeling.suspects import SUSPECT_COLUMNS, load_or_compute_suspects

REVIEW = Settings.load(REPO).params.labeling.review
OOF = {"folds": REVIEW.folds, "C": REVIEW.C}  # the out-of-fold regression of params.yaml


@pytest.fixture(scope="module")
def noisy_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (8×8 pixels as 64 features) with 5 % of the labels flipped to another class."""
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(3)
    flipped = rng.choice(len(y), size=int(0.05 * len(y)), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10
    return x, y, noisy, flipped


def precision_recall(found: pd.DataFrame, flipped: np.ndarray) -> tuple[float, float]:
    hits = len(set(found["position"]) & set(flipped))
    return hits / max(len(found), 1), hits / len(flipped)


@pytest.mark.parametrize("method", ["prune_by_noise_rate", "confident_joint"])
def test_finds_most_flipped_labels_with_few_false_flags(noisy_digits, method: str) -> None:
    x, truth, noisy, flipped = noisy_digits
    found = find_label_issues(x, noisy.astype(str), method=method, seed=0, **OOF)
    precision, recall = precision_recall(found, flipped)
    assert recall >= 0.7, f"{method}: recall {recall:.2f}"
    assert precision >= 0.6, f"{method}: precision {precision:.2f}"
    # ranked: least self-confident first
    assert found["self_confidence"].is_monotonic_increasing
    # the suggestion is the true class for most of the real errors it found
    real = found[found["position"].isin(flipped)]
    assert (real["suggested_label"] == truth[real["position"]].astype(str)).mean() >= 0.8
    assert (real["given_label"] == noisy[real["position"]].astype(str)).all()
    assert set(found.attrs["thresholds"]) == {str(d) for d in range(10)}


def test_accepts_out_of_fold_probabilities_directly(noisy_digits) -> None:
    x, _, noisy, _ = noisy_digits
    labels = noisy.astype(str)
    classes = [str(d) for d in range(10)]
    probabilities = out_of_fold_probabilities(x, labels, classes, seed=0, **OOF)
    assert probabilities.shape == (len(labels), 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    # auto-detected as probabilities: no regression is fitted on them
    from_probabilities = find_label_issues(probabilities, labels, classes=classes, method=REVIEW.method, **OOF)
    from_features = find_label_issues(x, labels, classes=classes, method=REVIEW.method, seed=0, **OOF)
    assert from_probabilities["position"].tolist() == from_features["position"].tolist()


def test_clean_labels_raise_few_flags(noisy_digits) -> None:
    x, truth, _, _ = noisy_digits
    found = find_label_issues(x, truth.astype(str), method="confident_joint", seed=0, **OOF)
    assert len(found) <= 0.02 * len(truth)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="not among the classes"):
        find_label_issues(np.eye(3), ["a", "b", "c"], classes=["a", "b"], method=REVIEW.method, **OOF)
    with pytest.raises(ValueError, match="at least 2 examples"):
        embeddings = np.random.default_rng(0).normal(size=(3, 2))
        find_label_issues(embeddings, ["a", "a", "b"], inputs="embeddings", method=REVIEW.method, **OOF)


# --- review decisions → a new snapshot ----------------------------------------------------------------


def test_corrections_become_a_new_dvc_data_version_never_an_edit(make_project: Callable[..., Path]) -> None:
    from visionloop.data.lineage import dvc_hash
    from visionloop.data.manifest import read_manifest
    from visionloop.data.prepare import prepare_from_settings
    from visionloop.data.snapshot import latest_snapshot
    from visionloop.store.predlog import PredictionLog

    root = make_project({"data": {"source": "incoming", "min_side": 8, "channels": 1}})
    files = write_tiny_source(root / "incoming")
    settings = Settings.load(root)
    prepare_from_settings(settings)
    manifest = read_manifest(settings.path(settings.params.data.prepared_dir))
    wrong = manifest[manifest["source_path"] == "a/a3.png"].iloc[0]
    right = manifest[manifest["source_path"] == "b/b1.png"].iloc[0]

    log = PredictionLog(f"sqlite:///{root / 'predictions.db'}")
    store = ReviewStore(log.engine)
    assert apply_corrections(settings, store) is None  # nothing pending
    store.decide(wrong["sha256"], path=wrong["path"], given_label="a", decision=CORRECTED, new_label="c",
                 model_version="1")
    store.decide(right["sha256"], path=right["path"], given_label="b", decision=CONFIRMED, model_version="1")
    with pytest.raises(ValueError):
        store.decide(right["sha256"], path=right["path"], given_label="b", decision=CORRECTED, new_label="b")

    suspects = pd.DataFrame({"sha256": [wrong["sha256"], right["sha256"], "other"], "given_label": ["a", "b", "c"]})
    assert undecided(suspects, store.decisions())["sha256"].tolist() == ["other"]

    applied = apply_corrections(settings, store)
    assert applied is not None and applied.applied == [wrong["sha256"]] and applied.missing == []
    assert applied.snapshot.n_relabeled == 1
    assert applied.snapshot.data_version.dvc_hash.endswith(".dir")
    assert applied.snapshot.data_version.dvc_hash == dvc_hash(applied.snapshot.directory)
    # a data version with nothing to commit: a model trained on it keeps its .dvc file and the remote its images
    untracked = run(["git", "status", "--porcelain", "--untracked-files=all"], root).stdout
    assert "incoming/" in untracked and "data/" not in untracked, untracked
    assert latest_snapshot(settings) == applied.snapshot.manifest
    table = pd.read_csv(applied.snapshot.manifest)
    assert len(table) == 24
    corrected = table[table["origin"] == "correction"]
    assert corrected["label"].tolist() == ["c"]
    assert (table["label"] == "c").sum() == 9
    # the original source is untouched: the file is still in its old class folder
    assert files["a"][3].exists() and (root / "incoming" / "a" / "a3.png").exists()
    row = store.decisions().set_index("sha256").loc[wrong["sha256"]]
    assert row["snapshot"] == str(applied.snapshot.directory)
    assert row["data_version"] == applied.snapshot.data_version.dvc_hash
    assert apply_corrections(settings, store) is None  # applied once
    log.dispose()


def test_suspects_of_the_prepared_data_are_computed_once_per_model_version(
    make_project: Callable[..., Path],
) -> None:
    from visionloop.data.prepare import prepare_from_settings

    root = make_project({"data": {"source": "incoming", "min_side": 8, "channels": 1}})
    write_tiny_source(root / "incoming")
    settings = Settings.load(root)
    prepare_from_settings(settings)
    model = tiny_model(["a", "b", "c"], "4")
    first = load_or_compute_suspects(settings, model)
    assert list(first.columns) == SUSPECT_COLUMNS
    output = settings.path(settings.params.labeling.review.output)
    assert output.exists() and output.with_suffix(".json").exists()
    stamp = output.stat().st_mtime_ns
    again = load_or_compute_suspects(settings, model)
    assert output.stat().st_mtime_ns == stamp  # read back, not recomputed
    assert again["sha256"].tolist() == first["sha256"].tolist()
    model.version = "5"
    load_or_compute_suspects(settings, model)
    assert output.stat().st_mtime_ns != stamp  # another version recomputes
