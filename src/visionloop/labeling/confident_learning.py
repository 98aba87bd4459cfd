"""Suspected label errors in the training data, confident-learning style (Northcutt et al., 2021).

A label is suspect when a model that never saw the example during fitting (out-of-fold) confidently
puts it in another class. The steps:

1. **Out-of-fold probabilities**: a k-fold logistic regression on the model's embeddings of the
   training images (``out_of_fold_probabilities``): each image is scored by a classifier fitted on
   the other folds, so its own — possibly wrong — label cannot vouch for it. The CNN itself saw
   those labels while training, so its embeddings may have memorised a few wrong ones; those stay
   hidden (a known limit of using the served model's features).
2. **Per-class thresholds** ``t_j`` = the mean out-of-fold probability of class ``j`` over the
   examples labeled ``j`` (the class's average self-confidence).
3. **Confident joint**: an example labeled ``i`` is counted as "confidently ``j``" for the class
   ``j`` with the highest probability among those with ``p_j >= t_j``.
4. **Which examples** (``method``):
   * ``confident_joint`` — the off-diagonal examples of the confident joint (labeled ``i``,
     confidently ``j != i``): high precision.
   * ``prune_by_noise_rate`` (default, cleanlab's default) — the confident joint calibrated to the
     class counts estimates how many examples labeled ``i`` are really ``j``; that many examples
     labeled ``i`` with the largest margin ``p_j - p_i`` are flagged. Higher recall at slightly
     lower precision. Examples whose given label is the model's top guess are never flagged.

The suspects are ranked by self-confidence (the probability of the given label), lowest first.

``labeling.suspects`` runs this on the prepared data with the served model's embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from visionloop.data.ingest import class_sort_key
from visionloop.params import LabelErrorMethod

METHODS: tuple[str, ...] = get_args(LabelErrorMethod)
ISSUE_COLUMNS = [
    "position",
    "given_label",
    "suggested_label",
    "self_confidence",
    "suggested_confidence",
    "margin",
    "threshold",
]


def ordered_classes(labels: Sequence[Any]) -> list[str]:
    """The distinct labels as text, numeric ones in numeric order (as training orders classes)."""
    return sorted({str(label) for label in labels}, key=class_sort_key)


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: Sequence[Any],
    classes: Sequence[str] | None = None,
    *,
    folds: int,
    C: float,
    seed: int = 0,
) -> np.ndarray:
    """N×K probabilities, each row from a standardised logistic regression fitted without that row's fold.

    ``folds`` and ``C`` (the inverse regularisation strength) are ``labeling.review.folds`` / ``.C``
    in production. Stratified folds; a class with fewer examples than ``folds`` lowers the number of folds (at least 2).
    Columns follow ``classes`` (default ``ordered_classes(labels)``); a class missing from a fold's
    training part gets probability 0 for that fold's rows.
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    names = list(classes) if classes is not None else ordered_classes(labels)
    index = {c: k for k, c in enumerate(names)}
    y = np.array([index[str(label)] for label in labels])
    smallest = int(np.bincount(y, minlength=len(names))[np.unique(y)].min())
    k = min(folds, smallest)
    if k < 2:
        raise ValueError(f"every class needs at least 2 examples for out-of-fold predictions (smallest has {smallest})")
    probabilities = np.zeros((len(y), len(names)))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for train, held_out in splitter.split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(x[train], y[train])
        probabilities[np.ix_(held_out, model.classes_)] = model.predict_proba(x[held_out])
    return probabilities


def class_thresholds(probabilities: np.ndarray, given: np.ndarray) -> np.ndarray:
    """t_j = mean probability of class j over the examples labeled j (inf for a class nobody has)."""
    k = probabilities.shape[1]
    thresholds = np.full(k, np.inf)
    for j in range(k):
        mine = given == j
        if mine.any():
            thresholds[j] = probabilities[mine, j].mean()
    return thresholds


def confident_classes(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per example, the most probable class among those at or above their threshold; -1 when none is."""
    above = probabilities >= thresholds[None, :]
    best = np.where(above, probabilities, -np.inf).argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def confident_joint(given: np.ndarray, confident: np.ndarray, k: int) -> np.ndarray:
    """K×K counts: row = given label, column = confidently predicted class."""
    joint = np.zeros((k, k), dtype=np.int64)
    counted = confident >= 0
    np.add.at(joint, (given[counted], confident[counted]), 1)
    return joint


def _prune_by_noise_rate(probabilities: np.ndarray, given: np.ndarray, joint: np.ndarray) -> np.ndarray:
    n, k = probabilities.shape
    counts = np.bincount(given, minlength=k)
    row_sums = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * counts[:, None], row_sums, out=np.zeros((k, k)), where=row_sums > 0)
    total = calibrated.sum()
    if total > 0:
        calibrated *= n / total
    flagged = np.zeros(n, dtype=bool)
    for i in range(k):
        rows = np.flatnonzero(given == i)
        for j in range(k):
            m = int(round(calibrated[i, j])) if i != j else 0
            if m <= 0 or not len(rows):
                continue
            margin = probabilities[rows, j] - probabilities[rows, i]
            flagged[rows[np.argsort(-margin, kind="stable")[:m]]] = True
    flagged[probabilities.argmax(axis=1) == given] = False
    return flagged


def _looks_like_probabilities(values: np.ndarray, k: int) -> bool:
    return (
        values.ndim == 2
        and values.shape[1] == k
        and bool(np.all(values >= -1e-9))
        and bool(np.allclose(values.sum(axis=1), 1.0, atol=1e-3))
    )


def find_label_issues(
    values: np.ndarray,
    labels: Sequence[Any],
    *,
    classes: Sequence[str] | None = None,
    inputs: Literal["auto", "embeddings", "probabilities"] = "auto",
    method: LabelErrorMethod,
    folds: int,
    C: float,
    seed: int = 0,
) -> pd.DataFrame:
    """Suspected label errors, most suspect first (``method``, ``folds``, ``C``: ``labeling.review``).

    ``values`` are either N×D features (embeddings; out-of-fold probabilities are computed here) or
    N×K out-of-fold probabilities whose columns follow ``classes``; ``inputs="auto"`` takes rows that
    are non-negative and sum to 1 over K columns as probabilities. ``labels`` are the given labels.

    Returns one row per suspect (``ISSUE_COLUMNS``): ``position`` in the input, the given and the
    suggested label, the probability of each (``self_confidence``, ``suggested_confidence``), their
    ``margin`` and the given class's threshold. ``frame.attrs`` holds ``thresholds`` (class → t_j),
    ``method`` and ``n_examples``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    names = list(classes) if classes is not None else ordered_classes(labels)
    unknown = sorted({str(label) for label in labels} - set(names))
    if unknown:
        raise ValueError(f"labels not among the classes: {unknown}")
    array = np.asarray(values, dtype=np.float64)
    if array.shape[0] != len(labels):
        raise ValueError(f"{array.shape[0]} rows of values for {len(labels)} labels")
    is_probabilities = inputs == "probabilities" or (
        inputs == "auto" and _looks_like_probabilities(array, len(names))
    )
    if is_probabilities:
        if array.shape[1] != len(names):
            raise ValueError(f"probabilities have {array.shape[1]} columns for {len(names)} classes")
        probabilities = array
    else:
        probabilities = out_of_fold_probabilities(array, labels, names, folds=folds, seed=seed, C=C)
    index = {c: k for k, c in enumerate(names)}
    given = np.array([index[str(label)] for label in labels])
    thresholds = class_thresholds(probabilities, given)
    confident = confident_classes(probabilities, thresholds)
    if method == "confident_joint":
        flagged = (confident >= 0) & (confident != given)
    else:
        flagged = _prune_by_noise_rate(probabilities, given, confident_joint(given, confident, len(names)))

    rows = np.flatnonzero(flagged)
    others = probabilities[rows].copy()
    others[np.arange(len(rows)), given[rows]] = -np.inf
    # the suggestion: the confident class when there is one, else the most probable other class
    suggested = np.where((confident[rows] >= 0) & (confident[rows] != given[rows]), confident[rows], others.argmax(1))
    self_confidence = probabilities[rows, given[rows]]
    suggested_confidence = probabilities[rows, suggested]
    frame = pd.DataFrame(
        {
            "position": rows,
            "given_label": [names[i] for i in given[rows]],
            "suggested_label": [names[j] for j in suggested],
            "self_confidence": self_confidence,
            "suggested_confidence": suggested_confidence,
            "margin": suggested_confidence - self_confidence,
            "threshold": thresholds[given[rows]],
        },
        columns=ISSUE_COLUMNS,
    )
    frame = frame.sort_values(["self_confidence", "margin"], ascending=[True, False], kind="stable")
    frame = frame.reset_index(drop=True)
    frame.attrs.update(
        thresholds={c: float(t) for c, t in zip(names, thresholds, strict=True)},
        method=method,
        n_examples=len(given),
    )
    return frame
