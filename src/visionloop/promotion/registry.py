"""The model registry: registration with lineage, the champion/challenger gate, audit history, rollback.

* ``register_run`` makes a training run's model a new version of ``registry.model_name``, tagged
  with its lineage and test metrics, under the ``challenger`` alias. The very first champion is
  chosen here, and only if it passes ``registry.min_quality``.
* ``promote`` is the gate: champion and challenger predict the same frozen gate set (the
  champion's held-out test split, ``bundle/test_set``, plus recent labeled production images) and
  the challenger takes the ``champion`` alias only if it wins on ``registry.gate.metric`` by at
  least the margin and regresses no class and no declared slice beyond the tolerances.
* Every decision, promoted or refused, and every rollback is an MLflow run in the promotion
  experiment carrying its ``PromotionRecord`` (tags + ``promotion_record.json``). Those runs *are*
  the audit log: they live wherever MLflow lives, so ``history`` works after restarts and against
  a remote tracking server.

Safety: serving follows the ``champion`` alias, and an alias moves in one registry call, so a
promotion is atomic from serving's point of view. Alias changes happen under an exclusive file
lock (``<state_dir>/registry-<name>.lock``, which serialises every process on this machine) and
compare-and-set: the champion is re-read under the lock and the change is refused if it moved
since the gate evaluated. Against a remote registry shared by several machines the lock is per
machine; the re-read then still narrows a race to the instant between that read and the flip.
"""

from __future__ import annotations

import fcntl
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from visionloop.config import Settings
from visionloop.contracts import CHALLENGER, CHAMPION, LINEAGE_TAGS, PromotionRecord
from visionloop.models.tracking import point_mlflow_at

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from visionloop.models.bundle import ServableModel
    from visionloop.training.evaluate import Evaluation

log = logging.getLogger(__name__)

# Run tags copied from the training run onto the model version (with LINEAGE_TAGS).
RUN_LINEAGE_TAGS = (*LINEAGE_TAGS, "data_path", "data_git_commit", "trigger")
METRIC_TAG_PREFIX = "metric."
KIND_TAG, KIND = "visionloop.kind", "promotion"
RECORD_TAG = "promotion_record"
RECORD_ARTIFACT = "promotion_record.json"
HEADLINE_METRICS = ("accuracy", "macro_f1", "roc_auc_ovr", "ece", "n")
_MAX_TAG = 8000  # MLflow's limit on a tag value
_EPS = 1e-12  # "drops by more than" tolerates float noise exactly at the tolerance


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out (the message says why)."""


class NothingToPromote(RegistryError):
    """There is no challenger (and no version was named)."""


class NothingToRollBack(RegistryError):
    """There is no champion, or no earlier champion to return to."""


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str]
    record: PromotionRecord | None = None  # the first-champion decision, when there was no champion


@dataclass
class GateResult:
    """What the gate found, before anything changes; ``apply_gate`` turns it into a decision."""

    model_name: str
    champion_version: str | None  # the champion the gate evaluated against
    candidate_version: str
    passed: bool
    decision: str  # "promoted" | "initial" when passed, else "refused"
    reason: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # {"champion": …, "challenger": …}
    comparison: pd.DataFrame | None = None  # metric, champion, challenger, delta, requirement, ok
    slices: pd.DataFrame | None = None  # slices.compare_slices
    challenger_slices: pd.DataFrame | None = None  # slices.slice_metrics of the challenger
    gate_set: dict[str, Any] = field(default_factory=dict)


# --- MLflow helpers ---------------------------------------------------------------------------


def _client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _not_found(error: Exception) -> bool:
    return getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias → version of a registered model; empty when the model does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if _not_found(error):
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _promotion_experiment(client: MlflowClient, settings: Settings, create: bool = True) -> str | None:
    """Id of the promotion experiment (created with the project's artifact root, as ``use_tracking`` does)."""
    from mlflow.exceptions import MlflowException

    name = settings.section("mlflow")["promotion_experiment"]
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    try:
        return client.create_experiment(name, artifact_location=f"{settings.artifact_root}/{name}")
    except MlflowException:  # created by a concurrent caller in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _fmt(value: float) -> str:
    return f"{value:.4f}" if np.isfinite(value) else "n/a"


# --- the lock ---------------------------------------------------------------------------------


@contextmanager
def registry_lock(settings: Settings, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on the registered model's aliases for every process (and thread) on this machine."""
    timeout = float(settings.section("registry").get("lock_timeout_seconds", 120) if timeout is None else timeout)
    path = settings.state_dir / f"registry-{settings.model_name}.lock"
    deadline = time.monotonic() + timeout
    with open(path, "a+") as handle:  # a fresh open file description: flock excludes other threads too
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another promotion has held {path} for over {timeout:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- registration -----------------------------------------------------------------------------


def register_run(settings: Settings, run_id: str, metrics: dict[str, float], trigger: str) -> RegisteredVersion:
    """Register ``runs:/{run_id}/model`` as a new version, tagged with lineage + metrics, as challenger.

    With no champion yet, the version becomes champion if ``metrics[min_quality.metric]`` reaches
    the threshold; that decision (``initial`` or ``refused``) is recorded like every promotion.
    """
    import mlflow

    client = _client(settings)
    name = settings.model_name
    run = client.get_run(run_id)
    tags = {key: run.data.tags[key] for key in RUN_LINEAGE_TAGS if key in run.data.tags}
    tags["run_id"] = run_id
    tags.update({f"{METRIC_TAG_PREFIX}{k}": f"{float(v):.6g}" for k, v in metrics.items()})
    point_mlflow_at(settings.tracking_uri)
    version = str(mlflow.register_model(f"runs:/{run_id}/model", name, tags=tags).version)
    client.set_registered_model_alias(name, CHALLENGER, version)

    record = None
    if CHAMPION not in _aliases(client, name):
        gate = _initial_gate(settings, version, metrics)
        with registry_lock(settings):
            if CHAMPION not in _aliases(client, name):  # nobody became champion in the meantime
                record = _apply_locked(client, settings, gate, trigger)
    aliases = [alias for alias, v in _aliases(client, name).items() if v == version]
    return RegisteredVersion(name, version, run_id, sorted(aliases), tags, record)


def _initial_gate(settings: Settings, version: str, metrics: dict[str, float]) -> GateResult:
    """The minimum-quality bar for the first champion, on the metrics measured at training time."""
    rule = settings.section("registry")["min_quality"]
    metric, threshold = rule["metric"], float(rule["threshold"])
    value = float(metrics.get(metric, float("nan")))
    passed = bool(np.isfinite(value) and value >= threshold)
    if passed:
        reason = f"first champion: v{version} has {metric} {_fmt(value)} ≥ the minimum {threshold:.4f}"
    elif np.isfinite(value):
        reason = f"v{version} is not made champion: {metric} {_fmt(value)} is below the minimum {threshold:.4f}"
    else:
        reason = f"v{version} is not made champion: its {metric} is unknown (registered without that metric)"
    comparison = pd.DataFrame(
        [
            {
                "metric": metric,
                "champion": float("nan"),
                "challenger": value,
                "delta": float("nan"),
                "requirement": f">= {threshold}",
                "ok": passed,
            }
        ]
    )
    return GateResult(
        settings.model_name,
        None,
        version,
        passed,
        "initial" if passed else "refused",
        reason,
        metrics={"challenger": {k: float(v) for k, v in metrics.items()}},
        comparison=comparison,
        gate_set={"source": "training-time test metrics"},
    )


def run_test_metrics(settings: Settings, run_id: str) -> dict[str, float]:
    """The headline test metrics of a training run (``test/…`` metrics, else ``bundle/metrics.json``)."""
    client = _client(settings)
    logged = client.get_run(run_id).data.metrics
    metrics = {
        k.removeprefix("test/"): float(v)
        for k, v in logged.items()
        if k.startswith("test/") and k.removeprefix("test/") in HEADLINE_METRICS
    }
    if metrics:
        return metrics
    import mlflow

    point_mlflow_at(settings.tracking_uri)
    try:
        stored = mlflow.artifacts.load_dict(f"runs:/{run_id}/bundle/metrics.json")
    except Exception as error:
        raise RegistryError(f"run {run_id} has no test metrics: run `visionloop evaluate` first ({error})") from error
    return {k: float(v) for k, v in stored.items() if k in HEADLINE_METRICS}


# --- the gate ---------------------------------------------------------------------------------


def promote(settings: Settings, trigger: str, candidate_version: str | None = None) -> PromotionRecord:
    """Gate the challenger (or ``candidate_version``) against the champion and act on the verdict."""
    return apply_gate(settings, evaluate_gate(settings, candidate_version), trigger)


def evaluate_gate(settings: Settings, candidate_version: str | None = None) -> GateResult:
    """Evaluate champion and candidate on the same frozen gate set; changes nothing."""
    client = _client(settings)
    name = settings.model_name
    aliases = _aliases(client, name)
    champion = aliases.get(CHAMPION)
    candidate = str(candidate_version) if candidate_version is not None else aliases.get(CHALLENGER)
    if candidate is None:
        raise NothingToPromote(f"{name} has no {CHALLENGER}: train and register a model, or name a version")
    try:
        client.get_model_version(name, candidate)
    except Exception as error:
        if _not_found(error):
            raise RegistryError(f"{name} has no version {candidate}") from error
        raise
    if candidate == champion:
        return GateResult(
            name,
            champion,
            candidate,
            False,
            "refused",
            f"v{candidate} is already the champion; nothing to promote",
        )
    with tempfile.TemporaryDirectory(prefix="visionloop-gate-") as tmp:
        return _evaluate(settings, champion, candidate, Path(tmp))


def _load(settings: Settings, version: str, destination: Path) -> ServableModel:
    from visionloop.models.bundle import load_registered

    return load_registered(f"models:/{settings.model_name}/{version}", settings.tracking_uri, destination)


def _unseen(settings: Settings, champion: str | None, candidate: str, challenger_test_dir: Path) -> Unseen:
    client = _client(settings)

    def trained_ms(version: str) -> int:
        run_id = client.get_model_version(settings.model_name, version).run_id
        return int(client.get_run(run_id).info.start_time) if run_id else int(time.time() * 1000)

    manifest = challenger_test_dir / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False) if manifest.exists() else pd.DataFrame()
    held_out = table["sha256"] if "sha256" in table.columns else []
    return Unseen(
        champion_trained_ms=trained_ms(champion) if champion is not None else 0,
        challenger_trained_ms=trained_ms(candidate),
        challenger_held_out=frozenset(held_out),
    )


def _refused(settings: Settings, champion: str | None, candidate: str, reason: str, **extra: Any) -> GateResult:
    return GateResult(settings.model_name, champion, candidate, False, "refused", reason, **extra)


def _evaluate(settings: Settings, champion: str | None, candidate: str, tmp: Path) -> GateResult:
    from visionloop.training.evaluate import evaluate_model

    champion_model = None
    if champion is not None:
        try:
            champion_model = _load(settings, champion, tmp / "champion")
        except Exception as error:  # noqa: BLE001 - any failure: no baseline to judge against
            return _refused(
                settings,
                champion,
                candidate,
                f"the champion v{champion} could not be loaded to evaluate against "
                f"({type(error).__name__}: {error}); roll back or repair it first",
            )
    try:
        challenger_model = _load(settings, candidate, tmp / "challenger")
    except Exception as error:  # noqa: BLE001 - a challenger that does not load never serves
        return _refused(
            settings,
            champion,
            candidate,
            f"the challenger v{candidate} could not be loaded ({type(error).__name__}: {error})",
        )
    base = tmp / ("champion" if champion_model is not None else "challenger") / "bundle"
    known = set(champion_model.classes if champion_model is not None else challenger_model.classes)
    try:
        unseen = _unseen(settings, champion, candidate, tmp / "challenger" / "bundle" / "test_set")
        images, labels, metadata, gate_set = gate_set_for(settings, base / "test_set", known, unseen)
    except Exception as error:  # noqa: BLE001 - without a gate set there is no verdict
        return _refused(settings, champion, candidate, f"the gate set could not be read ({error})")
    gate_set["from_version"] = champion or candidate
    try:
        challenger_eval = evaluate_model(challenger_model, images, labels)
        if not np.isfinite(challenger_eval.probabilities).all():
            raise ValueError("it produced non-finite probabilities")
    except Exception as error:  # noqa: BLE001 - any failure to predict is a refusal
        return _refused(
            settings,
            champion,
            candidate,
            f"the challenger v{candidate} could not predict on the gate set ({type(error).__name__}: {error})",
            gate_set=gate_set,
        )
    if champion_model is None:
        return _judge_initial(settings, candidate, challenger_eval, gate_set)
    try:
        champion_eval = evaluate_model(champion_model, images, labels)
    except Exception as error:  # noqa: BLE001
        return _refused(
            settings,
            champion,
            candidate,
            f"the champion v{champion} could not predict on its own gate set ({error})",
            gate_set=gate_set,
        )
    reference_path = base / "reference_profile.parquet"
    reference = pd.read_parquet(reference_path) if reference_path.exists() else None
    return judge(
        settings,
        champion,
        candidate,
        champion_eval,
        challenger_eval,
        images,
        labels,
        metadata,
        reference,
        gate_set,
    )


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


def gate_set_for(
    settings: Settings, test_dir: Path, known_labels: set[str], unseen: Unseen
) -> tuple[list[np.ndarray], list[str], pd.DataFrame, dict[str, Any]]:
    """The frozen gate set: a bundle's ``test_set`` plus recent labeled production images unseen by both.

    Returns images, labels, per-image metadata (manifest metadata columns and ``origin``:
    ``test_set`` or ``production``) and a description of the set.
    """
    from visionloop.data.ingest import load_image

    manifest = pd.read_csv(test_dir / "manifest.csv", dtype=str, keep_default_na=False)
    images = [load_image(test_dir / p) for p in manifest["path"]]
    labels = manifest["label"].astype(str).tolist()
    hashes = set(manifest["sha256"]) if "sha256" in manifest.columns else set()
    metadata = manifest.drop(columns=["path", "label", "sha256", "source_path"], errors="ignore")
    metadata = metadata.assign(origin="test_set")
    production, note = _production_rows(settings, known_labels, unseen, hashes)
    info: dict[str, Any] = {"n_test_set": len(images), "n_production": len(production), "production_note": note}
    if production:
        images += [image for image, _ in production]
        labels += [label for _, label in production]
        extra = pd.DataFrame({"origin": ["production"] * len(production)})
        metadata = pd.concat([metadata, extra], ignore_index=True).fillna("")
    return images, labels, metadata.reset_index(drop=True), info


def _production_rows(
    settings: Settings, known_labels: set[str], unseen: Unseen, already: set[str]
) -> tuple[list[tuple[np.ndarray, str]], str]:
    """The latest labeled predictions (``production_window``) that ``unseen`` admits; tolerant of no log."""
    url = settings.db_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return [], "no prediction log yet"
    from visionloop.data.ingest import load_image, pixel_sha256
    from visionloop.store.predlog import PredictionLog

    window = int(settings.section("registry")["gate"].get("production_window", 500))
    prediction_log = PredictionLog(url)
    try:
        frame = prediction_log.labeled().tail(window)
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


def _headline(evaluation: Evaluation) -> dict[str, float]:
    return {k: float(v) for k, v in evaluation.metrics().items() if k in HEADLINE_METRICS}


def _judge_initial(settings: Settings, candidate: str, evaluation: Evaluation, gate_set: dict[str, Any]) -> GateResult:
    """No champion: the candidate must pass the minimum-quality bar on its own test set."""
    gate = _initial_gate(settings, candidate, _headline(evaluation))
    gate.gate_set = gate_set
    return gate


def judge(
    settings: Settings,
    champion: str,
    candidate: str,
    champion_eval: Evaluation,
    challenger_eval: Evaluation,
    images: list[np.ndarray],
    labels: list[str],
    metadata: pd.DataFrame,
    reference: pd.DataFrame | None,
    gate_set: dict[str, Any],
) -> GateResult:
    """Primary metric by a margin, no class F1 and no declared slice regressed beyond tolerance."""
    from visionloop.monitoring.slices import build_slice_frame, compare_slices, slice_metrics

    gate = settings.section("registry")["gate"]
    metric, margin = gate["metric"], float(gate["margin"])
    class_tolerance, slice_tolerance = float(gate["class_tolerance"]), float(gate["slice_tolerance"])
    declared = gate.get("slices") or {}
    old, new = champion_eval.metrics(), challenger_eval.metrics()
    rows = []
    delta = new[metric] - old[metric]
    primary_ok = bool(np.isfinite(delta) and delta > 0 and delta >= margin - _EPS)
    rows.append(
        {
            "metric": metric,
            "champion": old[metric],
            "challenger": new[metric],
            "delta": delta,
            "requirement": f"delta > 0 and >= {margin}",
            "ok": primary_ok,
        }
    )
    rows += [
        {
            "metric": k,
            "champion": old[k],
            "challenger": new[k],
            "delta": new[k] - old[k],
            "requirement": "",
            "ok": None,
        }
        for k in HEADLINE_METRICS
        if k != metric
    ]
    old_classes, new_classes = champion_eval.per_class(), challenger_eval.per_class()
    class_drops = {}
    for cls, scores in old_classes.items():
        if scores["support"] == 0:
            continue
        after = new_classes.get(cls, {"f1": 0.0})["f1"]
        ok = scores["f1"] - after <= class_tolerance + _EPS
        rows.append(
            {
                "metric": f"f1_class_{cls}",
                "champion": scores["f1"],
                "challenger": after,
                "delta": after - scores["f1"],
                "requirement": f"drop <= {class_tolerance}",
                "ok": ok,
            }
        )
        class_drops[cls] = scores["f1"] - after
    comparison = pd.DataFrame(rows)

    stats = [c for c in declared.get("image_stats", []) if reference is None or c in reference.columns]
    meta = [c for c in [*declared.get("metadata", []), "origin"] if c in metadata.columns]
    if gate_set["n_production"] == 0:
        meta = [c for c in meta if c != "origin"]  # one value: the same as overall
    frame, slice_cols = build_slice_frame(
        images,
        labels,
        {
            "champion": np.array(champion_eval.classes)[champion_eval.y_pred],
            "challenger": np.array(challenger_eval.classes)[challenger_eval.y_pred],
        },
        stat_columns=stats,
        reference=reference,
        metadata=metadata,
        metadata_columns=meta,
    )
    slices = compare_slices(
        frame,
        label_col="label",
        champion_col="champion",
        challenger_col="challenger",
        slice_cols=slice_cols,
        tolerance=slice_tolerance,
        min_size=int(declared.get("min_size", 1)),
    )
    challenger_slices = slice_metrics(frame, label_col="label", pred_col="challenger", slice_cols=slice_cols)

    bad_classes = {c: d for c, d in class_drops.items() if d > class_tolerance + _EPS}
    bad_slices = slices[slices["regressed"]]
    passed = primary_ok and not bad_classes and bad_slices.empty
    parts = []
    verb = "beats" if primary_ok else "does not beat"
    parts.append(
        f"v{candidate} {verb} champion v{champion} on {metric}: {_fmt(old[metric])} → {_fmt(new[metric])} "
        f"({delta:+.4f}; needs > 0 and ≥ {margin:+.4f})"
    )
    if bad_classes:
        listed = _worst_first([f"{c} ({-d:+.3f})" for c, d in sorted(bad_classes.items(), key=lambda kv: -kv[1])])
        parts.append(f"F1 dropped by more than {class_tolerance} for class(es) {listed}")
    elif class_drops:
        worst = max(class_drops, key=class_drops.get)
        parts.append(
            f"no class F1 dropped by more than {class_tolerance} (worst: class {worst} {-class_drops[worst]:+.3f})"
        )
    checked = slices[slices["checked"]]
    if not bad_slices.empty:
        listed = _worst_first(
            [f"{r.column}={r.slice} ({r.delta:+.3f}, n={r.n})" for r in bad_slices.sort_values("delta").itertuples()]
        )
        parts.append(f"accuracy dropped by more than {slice_tolerance} on slice(s) {listed}")
    elif not checked.empty:
        worst = checked.loc[checked["delta"].idxmin()]
        parts.append(
            f"no slice accuracy dropped by more than {slice_tolerance} across {len(checked)} slices "
            f"(worst: {worst['column']}={worst['slice']} {worst['delta']:+.3f})"
        )
    parts.append(
        f"gate set: {gate_set['n_test_set']} held-out test images of v{champion} + "
        f"{gate_set['n_production']} labeled production images"
    )
    reason = ("promoted: " if passed else "refused: ") + "; ".join(parts)
    return GateResult(
        settings.model_name,
        champion,
        candidate,
        passed,
        "promoted" if passed else "refused",
        reason,
        metrics={"champion": _headline(champion_eval), "challenger": _headline(challenger_eval)},
        comparison=comparison,
        slices=slices,
        challenger_slices=challenger_slices,
        gate_set=gate_set,
    )


def _worst_first(items: list[str], shown: int = 5) -> str:
    """The first ``shown`` items (sorted worst first by the caller), and how many more there are."""
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")


def apply_gate(settings: Settings, gate: GateResult, trigger: str) -> PromotionRecord:
    """Act on a verdict under the lock, with compare-and-set on the champion; record the decision."""
    client = _client(settings)
    with registry_lock(settings):
        return _apply_locked(client, settings, gate, trigger)


def _apply_locked(client: MlflowClient, settings: Settings, gate: GateResult, trigger: str) -> PromotionRecord:
    name = settings.model_name
    aliases = _aliases(client, name)
    current = aliases.get(CHAMPION)
    decision, reason, to_version = gate.decision, gate.reason, current
    if gate.passed and current != gate.champion_version:
        decision = "refused"
        reason = (
            f"refused: the champion moved from {_v(gate.champion_version)} to {_v(current)} while the gate "
            f"was evaluating v{gate.candidate_version}; nothing changed (run promote again to gate "
            f"against the new champion). The gate had found: {gate.reason}"
        )
    elif gate.passed:
        client.set_registered_model_alias(name, CHAMPION, gate.candidate_version)  # the atomic flip
        if aliases.get(CHALLENGER) == gate.candidate_version:
            client.delete_registered_model_alias(name, CHALLENGER)
        to_version = gate.candidate_version
    record = PromotionRecord(
        model_name=name,
        decision=decision,
        from_version=current,
        to_version=to_version,
        candidate_version=gate.candidate_version,
        reason=reason,
        trigger=trigger,
        metrics=gate.metrics,
    )
    _log_record(client, settings, record, gate)
    log.info("%s", reason)
    return record


def _v(version: str | None) -> str:
    return f"v{version}" if version is not None else "no champion"


# --- the audit log ----------------------------------------------------------------------------


def _log_record(client: MlflowClient, settings: Settings, record: PromotionRecord, gate: GateResult | None) -> None:
    """One run in the promotion experiment: the record (tags + JSON), both models' metrics, the tables."""
    from mlflow.entities import Metric, Param

    experiment_id = _promotion_experiment(client, settings)
    record_json = json.dumps(record.to_dict(), sort_keys=True)
    if len(record_json) > _MAX_TAG:  # the artifact keeps the metrics; the tag must fit
        record_json = json.dumps({**record.to_dict(), "metrics": {}}, sort_keys=True)
    tags = {
        KIND_TAG: KIND,
        "model_name": record.model_name,
        "decision": record.decision,
        "from_version": str(record.from_version),
        "to_version": str(record.to_version),
        "candidate_version": str(record.candidate_version),
        "trigger": record.trigger,
        "reason": record.reason[:_MAX_TAG],
        "mlflow.note.content": record.reason[:_MAX_TAG],
        RECORD_TAG: record_json,
    }
    run_name = f"{record.decision} {_v(record.from_version)} → {_v(record.to_version)}"
    run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    gate_params = settings.section("registry").get("gate", {})
    params = {f"gate.{k}": str(v)[:500] for k, v in gate_params.items()}
    params.update({"champion.version": str(record.from_version), "challenger.version": str(record.candidate_version)})
    if gate is not None:
        params.update({f"gate_set.{k}": str(v)[:500] for k, v in gate.gate_set.items()})
    metrics = {f"{role}.{k}": v for role, values in record.metrics.items() for k, v in values.items()}
    if gate is not None and gate.comparison is not None:
        for row in gate.comparison.itertuples():
            if row.metric.startswith("f1_class_"):
                metrics[f"champion.{row.metric}"], metrics[f"challenger.{row.metric}"] = (
                    row.champion,
                    row.challenger,
                )
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and np.isfinite(v)],
        params=[Param(k, v) for k, v in params.items()],
    )
    client.log_dict(run_id, record.to_dict(), RECORD_ARTIFACT)
    if gate is not None:
        if gate.comparison is not None:
            client.log_text(run_id, gate.comparison.to_csv(index=False), "comparison.csv")
        if gate.slices is not None:
            client.log_text(run_id, gate.slices.to_csv(index=False), "slices_comparison.csv")
        if gate.challenger_slices is not None and len(gate.challenger_slices) > 1:
            from visionloop.monitoring.slices import plot_slices

            with tempfile.TemporaryDirectory() as tmp:
                plot = plot_slices(
                    gate.challenger_slices,
                    Path(tmp) / "challenger_slices.png",
                    title=f"Challenger v{record.candidate_version} on the gate set",
                )
                client.log_artifact(run_id, str(plot))
            client.log_text(run_id, gate.challenger_slices.to_csv(index=False), "challenger_slices.csv")
    client.set_terminated(run_id, "FINISHED")


def history(settings: Settings) -> list[PromotionRecord]:
    """Every recorded alias decision for the model, newest first (read from the promotion runs)."""
    client = _client(settings)
    experiment_id = _promotion_experiment(client, settings, create=False)
    if experiment_id is None:
        return []
    name = settings.model_name.replace("'", "\\'")
    query = f"tags.`{KIND_TAG}` = '{KIND}' and tags.model_name = '{name}'"
    records: list[PromotionRecord] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        for run in page:
            if RECORD_TAG in run.data.tags:
                records.append(PromotionRecord(**json.loads(run.data.tags[RECORD_TAG])))
        token = page.token
        if not token:
            break
    records.sort(key=lambda r: r.created_at, reverse=True)
    return records


# --- rollback ---------------------------------------------------------------------------------


def champion_stack(records: list[PromotionRecord]) -> list[str]:
    """Replay the history (newest first in ``records``) into the line of champions, oldest first.

    A promotion (or first champion) pushes a version; a rollback pops the version it left, so
    repeated rollbacks walk back one champion at a time.
    """
    stack: list[str] = []
    for record in reversed(records):
        if record.to_version is None:
            continue
        if record.decision in ("initial", "promoted", "assigned"):
            stack.append(record.to_version)
        elif record.decision == "rollback":
            if stack and stack[-1] == record.from_version:
                stack.pop()
            if not stack or stack[-1] != record.to_version:
                stack.append(record.to_version)
    return stack


def rollback(settings: Settings, trigger: str = "cli") -> PromotionRecord:
    """Move ``champion`` back to the champion before the current one, and record it."""
    client = _client(settings)
    name = settings.model_name
    with registry_lock(settings):
        current = _aliases(client, name).get(CHAMPION)
        if current is None:
            raise NothingToRollBack(f"{name} has no champion to roll back")
        stack = champion_stack(history(settings))
        if stack and stack[-1] == current:
            stack.pop()
        target = None
        while stack:
            candidate = stack.pop()
            if candidate == current:
                continue
            try:
                client.get_model_version(name, candidate)
            except Exception as error:
                if _not_found(error):  # deleted since: go further back
                    continue
                raise
            target = candidate
            break
        if target is None:
            raise NothingToRollBack(f"{name} has no earlier champion than v{current} in its promotion history")
        client.set_registered_model_alias(name, CHAMPION, target)
        record = PromotionRecord(
            model_name=name,
            decision="rollback",
            from_version=current,
            to_version=target,
            candidate_version=target,
            reason=f"rolled back: champion moved from v{current} back to v{target}, the champion before it "
            f"(asked by {trigger})",
            trigger=trigger,
            metrics=_side_by_side(settings, current, target),
        )
        _log_record(client, settings, record, None)
    return record


def _side_by_side(settings: Settings, champion: str | None, challenger: str) -> dict[str, dict[str, float]]:
    """The registered test metrics of the champion before and the version after an alias move made by hand."""
    metrics = {v["version"]: v["metrics"] for v in list_versions(settings) if v["version"] in (champion, challenger)}
    return {"champion": metrics.get(champion, {}), "challenger": metrics.get(challenger, {})}


def assign_champion(settings: Settings, version: str, reason: str, trigger: str = "cli") -> PromotionRecord:
    """Make ``version`` the champion without the gate — a person's decision, recorded with their reason.

    For what the gate cannot know (a known-bad champion, a fresh start); rollback walks back over it too.
    """
    client = _client(settings)
    name = settings.model_name
    with registry_lock(settings):
        client.get_model_version(name, version)  # fails clearly for a version that does not exist
        aliases = _aliases(client, name)
        current = aliases.get(CHAMPION)
        client.set_registered_model_alias(name, CHAMPION, version)
        if aliases.get(CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
        record = PromotionRecord(
            model_name=name,
            decision="assigned",
            from_version=current,
            to_version=version,
            candidate_version=version,
            reason=f"assigned by hand: champion moved from {_v(current)} to v{version} without the gate ({reason})",
            trigger=trigger,
            metrics=_side_by_side(settings, current, version),
        )
        _log_record(client, settings, record, None)
    return record


# --- reading the registry ---------------------------------------------------------------------


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version, newest first: version, aliases, metrics, lineage, created, run_id, status."""
    client = _client(settings)
    name = settings.model_name
    by_version: dict[str, list[str]] = {}
    for alias, version in _aliases(client, name).items():
        by_version.setdefault(version, []).append(alias)
    escaped = name.replace("'", "\\'")
    rows = []
    for mv in client.search_model_versions(f"name='{escaped}'"):
        tags = dict(mv.tags or {})
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "metrics": {
                    k.removeprefix(METRIC_TAG_PREFIX): float(v)
                    for k, v in tags.items()
                    if k.startswith(METRIC_TAG_PREFIX)
                },
                "lineage": {k: tags[k] for k in RUN_LINEAGE_TAGS if k in tags},
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "run_id": mv.run_id,
                "status": str(mv.status),
            }
        )
    rows.sort(key=lambda r: int(r["version"]) if r["version"].isdigit() else 0, reverse=True)
    return rows


class RegistryModelSource:
    """A ``serving.reload.ModelSource`` that follows an alias of the registered model."""

    def __init__(self, settings: Settings, alias: str = CHAMPION) -> None:
        self.settings = settings
        self.alias = alias
        self.name = settings.model_name

    def __repr__(self) -> str:
        return f"RegistryModelSource({self.name!r}@{self.alias})"

    def current_version(self) -> str | None:
        """Where the alias points now (one registry call); None when nothing holds it yet."""
        return _aliases(_client(self.settings), self.name).get(self.alias)

    def load(self, version: str) -> ServableModel:
        """Download and build one version; its files are read into memory, then removed."""
        with tempfile.TemporaryDirectory(prefix=f"visionloop-{self.name}-v{version}-") as tmp:
            return _load(self.settings, str(version), Path(tmp))


def registry_model_source(settings: Settings, alias: str = CHAMPION) -> RegistryModelSource:
    """The model source serving polls for hot reload: the registered model's ``alias``."""
    return RegistryModelSource(settings, alias)
