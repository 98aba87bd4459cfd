"""People's decisions on suspected label errors (``labeling.suspects``), and corrections applied as data.

A person confirms or corrects each suspect on ``GET /label/review``; decisions live in the
``label_review`` table of the prediction database, keyed by the image's pixel hash. Corrections are
applied as a NEW data snapshot (``visionloop.data.snapshot.create_snapshot(relabel=...)``), never in
place, so the corrected labels become a new DVC data version that the next training run picks up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa

from visionloop.data.images import InvalidImage, canonicalize_image_bytes
from visionloop.data.snapshot import Snapshot, StaleBase, create_snapshot, current_source, source_table
from visionloop.store.schema import as_utc, label_review_table, metadata

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from visionloop.config import Settings

log = logging.getLogger(__name__)

CONFIRMED, CORRECTED = "confirmed", "corrected"
_STALE_ATTEMPTS = 3  # corrections recomputed on a newer snapshot before giving up (each try waits for the lock)


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
    data = settings.params.data
    index: dict[str, list[str]] = {}
    for path in source_table(base)["path"]:
        try:
            canonical = canonicalize_image_bytes(
                Path(path).read_bytes(),
                channels=data.channels,
                min_side=data.min_side,
                max_pixels=data.max_pixels,
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
    pending = store.pending_corrections()
    if pending.empty:
        return None
    for attempt in range(_STALE_ATTEMPTS):
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
        try:
            snapshot = create_snapshot(settings, relabel=relabel, reason="label-corrections", base=base)
            break
        except StaleBase:  # another snapshot (a retrain's) became current meanwhile: relabel that one
            if attempt == _STALE_ATTEMPTS - 1:
                raise
    store.mark_applied(applied, str(snapshot.directory), snapshot.data_version.dvc_hash)
    log.info("applied %d label corrections as %s", len(applied), snapshot.directory)
    return AppliedCorrections(snapshot, applied, missing)
