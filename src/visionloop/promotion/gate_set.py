"""The frozen gate set: a bundle's held-out ``test_set`` plus recent labeled production images.

Both models are judged on the same images. Production images join only when neither model can
have trained on them (``Unseen``), so the set never flatters one of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES
from visionloop.data.images import load_image, pixel_sha256
from visionloop.data.manifest import metadata_columns
from visionloop.models.registry import run_started_ms
from visionloop.promotion.gate import GateSet
from visionloop.store.predlog import PredictionLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unseen:
    """Which labeled production images neither model can have trained on.

    A label that arrived after a model's training run started cannot be in its training data; the
    challenger's held-out test split is unseen by it whenever its label arrived. Rows labeled
    earlier may sit in a model's training split and would flatter it, so they stay out.
    """

    champion_trained_ms: int = 0  # start of the champion's training run (0: no champion)
    challenger_trained_ms: int = 0  # start of the challenger's training run
    challenger_held_out: frozenset[str] = frozenset()  # pixel sha256 of the challenger's test split

    def admits(self, labeled_ms: int, sha256: str) -> bool:
        return labeled_ms > self.champion_trained_ms and (
            labeled_ms > self.challenger_trained_ms or sha256 in self.challenger_held_out
        )


def unseen_by(settings: Settings, champion: str | None, candidate: str, candidate_dir: Path) -> Unseen:
    """``Unseen`` for two versions of the project's model (``candidate_dir``: the candidate's bundle folder)."""
    manifest = candidate_dir / BUNDLE_FILES["test_set"] / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False) if manifest.exists() else pd.DataFrame()
    held_out = table["sha256"] if "sha256" in table.columns else []
    return Unseen(
        champion_trained_ms=run_started_ms(settings, champion) if champion is not None else 0,
        challenger_trained_ms=run_started_ms(settings, candidate),
        challenger_held_out=frozenset(held_out),
    )


def gate_set_for(settings: Settings, bundle_dir: Path, known_labels: set[str], unseen: Unseen) -> GateSet:
    """The test set and reference profile of the bundle in ``bundle_dir`` plus the production rows ``unseen`` admits.

    The metadata holds the manifest's metadata columns and ``origin`` (``test_set`` or ``production``).
    """
    test_dir = bundle_dir / BUNDLE_FILES["test_set"]
    manifest = pd.read_csv(test_dir / "manifest.csv", dtype=str, keep_default_na=False)
    images = [load_image(test_dir / p) for p in manifest["path"]]
    labels = manifest["label"].astype(str).tolist()
    hashes = set(manifest["sha256"]) if "sha256" in manifest.columns else set()
    metadata = manifest[metadata_columns(manifest.columns)]
    metadata = metadata.assign(origin="test_set")
    production, note = _production_rows(settings, known_labels, unseen, hashes)
    info = {"n_test_set": len(images), "n_production": len(production), "production_note": note}
    if production:
        images += [image for image, _ in production]
        labels += [label for _, label in production]
        extra = pd.DataFrame({"origin": ["production"] * len(production)})
        metadata = pd.concat([metadata, extra], ignore_index=True).fillna("")
    profile = bundle_dir / BUNDLE_FILES["reference_profile"]
    reference = pd.read_parquet(profile) if profile.exists() else None
    return GateSet(images, labels, metadata.reset_index(drop=True), info, reference)


def _production_rows(
    settings: Settings, known_labels: set[str], unseen: Unseen, already: set[str]
) -> tuple[list[tuple[np.ndarray, str]], str]:
    """The latest labeled predictions (``production_window``) that ``unseen`` admits; tolerant of no log."""
    url = settings.db_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return [], "no prediction log yet"
    prediction_log = PredictionLog(url)
    try:
        frame = prediction_log.labeled().tail(settings.params.registry.gate.production_window)
    except Exception as error:  # noqa: BLE001 - an unreachable log must not block the gate; it is noted
        log.warning("gate: labeled production data unavailable: %s", error)
        return [], f"prediction log unavailable ({type(error).__name__}: {error})"
    finally:
        prediction_log.dispose()
    rows: list[tuple[np.ndarray, str]] = []
    unusable = seen = 0
    labeled_at = frame["feedback_at"].fillna(frame["created_at"]) if len(frame) else frame["created_at"]
    for image_path, label, when in zip(frame["image_path"], frame["feedback_label"], labeled_at, strict=True):
        path = settings.path(image_path) if isinstance(image_path, str) and image_path else None
        if path is None or not path.is_file() or str(label) not in known_labels:
            unusable += 1
            continue
        image = load_image(path)
        digest = pixel_sha256(image)
        if digest in already or not unseen.admits(int(pd.Timestamp(when).timestamp() * 1000), digest):
            seen += 1
            continue
        already.add(digest)
        rows.append((image, str(label)))
    note = f"{len(rows)} of the latest {len(frame)} labeled production images"
    if seen:
        note += f"; {seen} left out: labeled before a model was trained (may be in its training data) or duplicates"
    if unusable:
        note += f"; {unusable} left out: image missing or label unknown to the champion"
    return rows, note
