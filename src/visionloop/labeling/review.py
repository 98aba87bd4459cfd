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

A person confirms or corrects them on ``GET /label/review``; corrections are applied as a NEW data
snapshot (``visionloop.data.snapshot.create_snapshot(relabel=...)``), never in place. Decisions live in
the ``label_review`` table of the prediction database, keyed by the image's pixel hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from visionloop.store.schema import as_utc, label_review_table, metadata

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from visionloop.config import Settings
    from visionloop.data.snapshot import Snapshot
    from visionloop.models.bundle import ServableModel

log = logging.getLogger(__name__)

Method = Literal["prune_by_noise_rate", "confident_joint"]
METHODS: tuple[str, ...] = ("prune_by_noise_rate", "confident_joint")
ISSUE_COLUMNS = [
    "position",
    "given_label",
    "suggested_label",
    "self_confidence",
    "suggested_confidence",
    "margin",
    "threshold",
]


# --- the finder ----------------------------------------------------------------------------------


def ordered_classes(labels: Sequence[Any]) -> list[str]:
    """The distinct labels as text, numeric ones in numeric order (as training orders classes)."""
    from visionloop.data.ingest import class_sort_key

    return sorted({str(label) for label in labels}, key=class_sort_key)


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: Sequence[Any],
    classes: Sequence[str] | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    C: float = 0.3,
) -> np.ndarray:
    """N×K probabilities, each row from a standardised logistic regression fitted without that row's fold.

    Stratified folds; a class with fewer examples than ``folds`` lowers the number of folds (at least 2).
    Columns follow ``classes`` (default ``ordered_classes(labels)``); a class missing from a fold's
    training part gets probability 0 for that fold's rows.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

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
    method: Method = "prune_by_noise_rate",
    folds: int = 5,
    seed: int = 0,
    C: float = 0.3,
) -> pd.DataFrame:
    """Suspected label errors, most suspect first.

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


# --- the prepared data with a served model -----------------------------------------------------------


@dataclass(frozen=True)
class ReviewConfig:
    """``labeling.review`` of params.yaml."""

    folds: int = 5
    C: float = 0.3
    method: str = "prune_by_noise_rate"
    splits: tuple[str, ...] = ("train", "val", "test")
    output: str = "reports/label_suspects.csv"

    @classmethod
    def from_settings(cls, settings: Settings) -> ReviewConfig:
        cfg = settings.section("labeling").get("review") or {}
        default = cls()
        return cls(
            folds=int(cfg.get("folds", default.folds)),
            C=float(cfg.get("C", default.C)),
            method=str(cfg.get("method", default.method)),
            splits=tuple(cfg.get("splits") or default.splits),
            output=str(cfg.get("output", default.output)),
        )


SUSPECT_COLUMNS = [
    "sha256",
    "path",
    "split",
    "source_path",
    *ISSUE_COLUMNS[1:],
    "model_name",
    "model_version",
]


def prepared_dir(settings: Settings) -> Path:
    return settings.path(settings.section("data")["prepared_dir"])


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def suspects_for_prepared(
    settings: Settings, model: ServableModel, splits: Sequence[str] | None = None
) -> pd.DataFrame:
    """The prepared data's suspected label errors, from ``model``'s embeddings (``SUSPECT_COLUMNS``)."""
    from visionloop.data.ingest import load_image, read_manifest
    from visionloop.monitoring.features import predict_in_chunks

    config = ReviewConfig.from_settings(settings)
    manifest = read_manifest(prepared_dir(settings))
    wanted = tuple(splits) if splits is not None else config.splits
    manifest = manifest[manifest["split"].isin(wanted)].reset_index(drop=True)
    if manifest.empty:
        empty = pd.DataFrame(columns=SUSPECT_COLUMNS)
        empty.attrs.update(model_name=model.name, model_version=str(model.version), classes=[])
        return empty
    images = [load_image(p) for p in manifest["abs_path"]]
    embeddings = predict_in_chunks(model, images).embeddings
    classes = ordered_classes(manifest["label"])
    issues = find_label_issues(
        embeddings,
        manifest["label"].tolist(),
        classes=classes,
        inputs="embeddings",
        method=config.method,  # type: ignore[arg-type]
        folds=config.folds,
        seed=settings.seed,
        C=config.C,
    )
    rows = manifest.iloc[issues["position"].to_numpy()].reset_index(drop=True)
    frame = pd.concat([rows[["sha256", "path", "split", "source_path"]], issues.drop(columns="position")], axis=1)
    frame["model_name"] = model.name
    frame["model_version"] = str(model.version)
    frame = frame[SUSPECT_COLUMNS].copy()
    frame.attrs.update(issues.attrs, classes=classes, model_name=model.name, model_version=str(model.version))
    return frame


def _suspects_meta_path(output: Path) -> Path:
    return output.with_suffix(".json")


def save_suspects(settings: Settings, frame: pd.DataFrame, output: Path | None = None) -> Path:
    """Write the table (CSV) and what it was computed from (JSON beside it: model, manifest hash)."""
    config = ReviewConfig.from_settings(settings)
    target = output or settings.path(config.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target, index=False)
    manifest = prepared_dir(settings) / "manifest.csv"
    meta = {
        "model_name": frame.attrs.get("model_name"),
        "model_version": frame.attrs.get("model_version"),
        "manifest_sha256": file_sha256(manifest) if manifest.exists() else None,
        "method": config.method,
        "folds": config.folds,
        "classes": frame.attrs.get("classes", []),
        "thresholds": frame.attrs.get("thresholds", {}),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _suspects_meta_path(target).write_text(json.dumps(meta, indent=2) + "\n")
    return target


def load_or_compute_suspects(settings: Settings, model: ServableModel, force: bool = False) -> pd.DataFrame:
    """The saved table when it was computed by this model version on this manifest; else compute and save."""
    config = ReviewConfig.from_settings(settings)
    target = settings.path(config.output)
    meta_path = _suspects_meta_path(target)
    manifest = prepared_dir(settings) / "manifest.csv"
    if not force and target.exists() and meta_path.exists() and manifest.exists():
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("model_name") == model.name
            and meta.get("model_version") == str(model.version)
            and meta.get("manifest_sha256") == file_sha256(manifest)
            and meta.get("method") == config.method
        ):
            frame = pd.read_csv(target, dtype={"sha256": str, "given_label": str, "suggested_label": str,
                                               "model_version": str, "path": str, "split": str,
                                               "source_path": str})
            frame.attrs.update(meta)
            return frame
    frame = suspects_for_prepared(settings, model)
    save_suspects(settings, frame, target)
    return frame


# --- review decisions and corrections ----------------------------------------------------------------

CONFIRMED, CORRECTED = "confirmed", "corrected"

class ReviewStore:
    """People's decisions on suspected label errors, in the ``label_review`` table of ``engine``'s database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def decide(
        self,
        sha256: str,
        *,
        path: str,
        given_label: str,
        decision: str,
        new_label: str | None = None,
        model_version: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Record (or replace, until applied) the decision on one image."""
        if decision not in (CONFIRMED, CORRECTED):
            raise ValueError(f"decision must be {CONFIRMED!r} or {CORRECTED!r}, got {decision!r}")
        if decision == CORRECTED and (not new_label or new_label == given_label):
            raise ValueError("a correction needs a new label different from the given one")
        row = {
            "sha256": sha256,
            "path": path,
            "given_label": given_label,
            "decision": decision,
            "new_label": new_label if decision == CORRECTED else None,
            "model_version": model_version,
            "decided_at": as_utc(at or datetime.now(UTC)),
            "applied_at": None,
            "snapshot": None,
            "data_version": None,
        }
        with self.engine.begin() as connection:
            connection.execute(label_review_table.delete().where(label_review_table.c.sha256 == sha256))
            connection.execute(label_review_table.insert(), [row])

    def decisions(self) -> pd.DataFrame:
        with self.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(sa.select(label_review_table))]
        return pd.DataFrame(rows, columns=[c.name for c in label_review_table.columns])

    def pending_corrections(self) -> pd.DataFrame:
        frame = self.decisions()
        return frame[(frame["decision"] == CORRECTED) & frame["applied_at"].isna()].reset_index(drop=True)

    def mark_applied(self, shas: Sequence[str], snapshot: str, data_version: str, at: datetime | None = None) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                label_review_table.update()
                .where(label_review_table.c.sha256.in_(list(shas)))
                .values(applied_at=as_utc(at or datetime.now(UTC)), snapshot=snapshot, data_version=data_version)
            )


def undecided(suspects: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """Suspects nobody has decided on yet for the label they carry now.

    A decision is keyed by pixels and the label it judged: after a correction is trained on, the
    image carries the new label and is shown again only if a model disputes that one too.
    """
    if decisions.empty or suspects.empty:
        return suspects
    decided = set(zip(decisions["sha256"], decisions["given_label"], strict=True))
    keep = [(s, g) not in decided for s, g in zip(suspects["sha256"], suspects["given_label"], strict=True)]
    return suspects[keep].reset_index(drop=True)


def source_paths_by_pixels(settings: Settings, base: Path) -> dict[str, list[str]]:
    """Pixel hash → the paths of ``base`` (as ``snapshot.source_table`` names them) holding those pixels.

    Corrections are decided on prepared images; the snapshot relabels source files. The pixel hash
    links the two whatever the source's layout (folder, manifest, earlier snapshot).
    """
    from visionloop.data.ingest import InvalidImage, canonicalize_image_bytes
    from visionloop.data.snapshot import source_table

    data = settings.section("data")
    index: dict[str, list[str]] = {}
    for path in source_table(base)["path"]:
        try:
            canonical = canonicalize_image_bytes(
                Path(path).read_bytes(),
                channels=int(data["channels"]),
                min_side=int(data["min_side"]),
                max_pixels=int(data["max_pixels"]),
            )
        except (InvalidImage, OSError):
            continue  # quarantined at prepare time: never a suspect
        index.setdefault(canonical.sha256, []).append(str(path))
    return index


@dataclass
class AppliedCorrections:
    snapshot: Snapshot
    applied: list[str]  # pixel hashes now corrected in the snapshot
    missing: list[str]  # pixel hashes not found in the source (left pending)

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": str(self.snapshot.directory),
            "manifest": str(self.snapshot.manifest),
            "data_version": self.snapshot.data_version.dvc_hash,
            "n_images": len(pd.read_csv(self.snapshot.manifest)),
            "n_relabeled": self.snapshot.n_relabeled,
            "applied": len(self.applied),
            "missing": self.missing,
        }


def apply_corrections(settings: Settings, store: ReviewStore) -> AppliedCorrections | None:
    """Every pending correction as ONE new data snapshot (``create_snapshot(relabel=...)``); None if none.

    The current source (the newest snapshot, or ``data.source``) is copied, never edited.
    """
    from visionloop.data.snapshot import create_snapshot, current_source

    pending = store.pending_corrections()
    if pending.empty:
        return None
    base = current_source(settings)
    by_pixels = source_paths_by_pixels(settings, base)
    relabel: dict[str, str] = {}
    applied, missing = [], []
    for sha, new_label in zip(pending["sha256"], pending["new_label"], strict=True):
        paths = by_pixels.get(sha)
        if not paths:
            missing.append(sha)
            continue
        applied.append(sha)
        relabel.update(dict.fromkeys(paths, new_label))
    if not relabel:
        raise LookupError(f"none of the {len(missing)} corrected images is in the current source {base}")
    snapshot = create_snapshot(settings, relabel=relabel, reason="label-corrections", base=base)
    store.mark_applied(applied, str(snapshot.directory), snapshot.data_version.dvc_hash)
    log.info("applied %d label corrections as %s", len(applied), snapshot.directory)
    return AppliedCorrections(snapshot, applied, missing)
