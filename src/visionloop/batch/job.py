"""Batch inference: a folder or manifest of images → one Parquet row per image, resumable and shardable.

Input
    * a folder: every regular file under it, recursively (hidden files and folders — names starting
      with "." — are skipped); a file that is not a readable image gets an error row, it is not dropped;
    * a CSV manifest with a header: ``path[,label][,meta...]``; relative paths are relative to the
      CSV's folder; ``label`` is carried as ``true_label`` and other columns are carried verbatim.

    ``list_inputs`` gives the keys in a deterministic order (sorted relative POSIX paths of a folder,
    manifest order of a CSV, first occurrence of a repeated path). ``shard_inputs`` splits them by a
    stable hash of the key, so a key belongs to the same shard whatever else is in the listing.

Output rows (schema ``output_schema``)
    ``path`` (the key: relative to the input folder, or as written in the manifest), ``label``
    (predicted class), ``confidence``, one ``prob_<class>`` per class (float32), ``status``
    (``ok`` | ``error``), ``error`` (a reason a person can act on), ``error_code`` (the stable codes
    of ``visionloop.data.ingest``: ``empty``, ``not_an_image``, ``corrupt``, ``too_small``, ``too_large``,
    ``missing_file``, ``unreadable``), ``model_name``, ``model_version``, then ``true_label`` and the
    metadata columns of a manifest. Error rows have nulls in the prediction columns.

Output layout (the unit of progress is the *part*: a Parquet file of up to ``part_size`` rows)
    * ``OUTPUT`` is a directory (any name not ending in ``.parquet``)::

          OUTPUT/part-s<i>of<n>-<seq>.parquet    committed parts (shard i of n, sequence number)
          OUTPUT/.part-s<i>of<n>-<seq>.tmp       a part being written (ignored by readers)

      It is a Parquet dataset: ``pandas.read_parquet(OUTPUT)`` reads every committed row.
    * ``OUTPUT`` ends in ``.parquet``: parts go to ``OUTPUT.parts/`` (same layout) and, once every
      input is done, ``consolidate`` streams them (after any rows already in ``OUTPUT``) into one
      file, written beside it and renamed over ``OUTPUT``, then removes ``OUTPUT.parts/``.

Resumable and idempotent
    A part is written to a temporary name, fsynced and renamed: it is committed whole or not at all.
    A run first reads the ``path`` column of every committed part (and of a consolidated ``OUTPUT``),
    and predicts only the keys not there, so rerunning after a crash or ``kill -9`` does the rest and
    writes no duplicates; rerunning a finished job does nothing (or only the newly added inputs).
    Error rows count as done (the file was read and judged); delete the output to retry them.
    An output holds one model version: a run with another model refuses to write into it
    (``OutputConflict``); put ``{model}`` / ``{version}`` in the output path (``expand_output``) to
    keep one output per version.

Prediction log (optional)
    Each ``ok`` row is also written to the prediction log (``source="batch"``, drift features from
    ``predlog.build_records``, ``image_path`` = the input file). Its id is derived from the model
    version, the output and the key, and ids already in the log are skipped: a rerun logs nothing
    twice. The log is written before a part is committed, so a crash between the two is repaired
    by the rerun.

Shards
    ``predict_batch(..., shard=(i, n))`` handles only shard ``i`` of ``n`` and names its parts
    ``part-s<i>of<n>-…``: shards run in parallel (threads, processes, machines sharing the output
    folder) without coordinating; a shard never consolidates — run ``consolidate`` (or the unsharded
    call, which then finds nothing left to do) after all of them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from visionloop.data.ingest import MISSING_FILE, UNREADABLE, InvalidImage, canonicalize_image_bytes
from visionloop.monitoring.features import PROBABILITY_PREFIX
from visionloop.training.preprocess import as_hwc

if TYPE_CHECKING:
    from visionloop.models.bundle import ServableModel
    from visionloop.store.predlog import PredictionLog

log = logging.getLogger(__name__)

OK = "ok"
ERROR = "error"
DEFAULT_PART_SIZE = 2048
BASE_COLUMNS = ["path", "label", "confidence"]
STATUS_COLUMNS = ["status", "error", "error_code", "model_name", "model_version"]
TRUE_LABEL = "true_label"
_PART_RE = re.compile(r"^part-s(\d+)of(\d+)-(\d+)\.parquet$")
_ID_NAMESPACE = uuid.UUID("6f1c1a52-7f0e-4d4b-9a8e-5b7f0c1d2e3f")
_IN_QUERY = 500  # ids per "already logged?" query (SQLite's variable limit)


class OutputConflict(ValueError):
    """The output already holds predictions of another model version (or another input schema)."""


# --- inputs ---------------------------------------------------------------------------------------


@dataclass
class InputSource:
    """Where the keys of ``list_inputs`` point: a folder, or a manifest with its labels and metadata."""

    root: Path  # the folder, or the manifest's folder (relative keys resolve against it)
    manifest: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)  # key → manifest label
    meta: dict[str, dict[str, str]] = field(default_factory=dict)  # key → metadata columns
    meta_columns: list[str] = field(default_factory=list)
    has_label: bool = False
    keys: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, inputs: Path | str) -> InputSource:
        inputs = Path(inputs)
        if inputs.is_dir():
            return cls(root=inputs.resolve())
        if inputs.is_file() and inputs.suffix.lower() == ".csv":
            return cls._from_manifest(inputs)
        if not inputs.exists():
            raise FileNotFoundError(f"batch input {inputs} does not exist")
        raise ValueError(f"batch input {inputs} must be a folder of images or a .csv manifest (path[,label][,meta...])")

    @classmethod
    def _from_manifest(cls, manifest: Path) -> InputSource:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        table.columns = [str(c).strip() for c in table.columns]
        if "path" not in table.columns:
            raise ValueError(f"{manifest}: no 'path' column; a batch manifest is path[,label][,meta...] with a header")
        has_label = "label" in table.columns
        meta_columns = [c for c in table.columns if c not in ("path", "label")]
        reserved = {*BASE_COLUMNS, *STATUS_COLUMNS, TRUE_LABEL}
        clashing = sorted(c for c in meta_columns if c in reserved or c.startswith(PROBABILITY_PREFIX))
        if clashing:
            raise ValueError(f"{manifest}: column(s) {clashing} clash with the output's columns; rename them")
        source = cls(root=manifest.resolve().parent, manifest=manifest, meta_columns=meta_columns, has_label=has_label)
        blank = 0
        for row in table.to_dict(orient="records"):
            key = row["path"].strip()
            if not key:
                blank += 1
                continue
            if key in source.meta or key in source.labels:
                continue  # first occurrence wins
            source.keys.append(key)
            source.meta[key] = {c: row[c] for c in meta_columns}
            if has_label:
                source.labels[key] = row["label"].strip()
        if blank:
            log.warning("%s: %d row(s) with an empty path skipped", manifest, blank)
        return source

    def file(self, key: str) -> str:
        """The file a key names (a plain string: this runs once per image)."""
        return os.path.join(self.root, key)

    def list_keys(self, exclude: Iterable[Path] = ()) -> list[str]:
        if self.manifest is not None:
            return list(self.keys)
        return _walk(self.root, [Path(p).resolve() for p in exclude])


def _walk(root: Path, exclude: list[Path]) -> list[str]:
    """Relative keys of the files under the resolved ``root``, hidden ones and ``exclude`` left out.

    os.walk does not enter symlinked folders, so every path it yields under a resolved root is real
    already: only symlinked files need resolving (a ``resolve()`` per file cost ~0.03 ms per image).
    """
    excluded = {str(path) for path in exclude}
    keys: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.join(folder, d) not in excluded]
        prefix = os.path.relpath(folder, root).replace(os.sep, "/")
        for name in files:
            path = os.path.join(folder, name)
            if name.startswith(".") or path in excluded:
                continue
            if excluded and os.path.islink(path) and os.path.realpath(path) in excluded:
                continue
            keys.append(name if prefix == "." else f"{prefix}/{name}")
    keys.sort()
    return keys


def list_inputs(inputs: Path | str, exclude: Iterable[Path | str] = ()) -> list[str]:
    """The keys of a batch input in a deterministic order; ``exclude`` keeps an output inside it out."""
    keys = InputSource.open(inputs).list_keys([Path(p) for p in exclude])
    if not keys:
        raise ValueError(f"batch input {inputs} holds no files")
    return keys


def shard_of(key: str, n: int) -> int:
    """The shard of a key: a stable hash, independent of the rest of the listing."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % n


def shard_inputs(items: Sequence[str], n: int) -> list[list[str]]:
    """Split keys into ``n`` shards by ``shard_of``, keeping their order inside each shard."""
    if n < 1:
        raise ValueError(f"the number of shards must be at least 1, got {n}")
    shards: list[list[str]] = [[] for _ in range(n)]
    for key in items:
        shards[shard_of(key, n)].append(key)
    return shards


# --- output layout --------------------------------------------------------------------------------


def expand_output(output: str | Path, model_name: str, model_version: str) -> Path:
    """Fill ``{model}`` and ``{version}`` in an output path (one output per model version)."""
    return Path(str(output).replace("{model}", model_name).replace("{version}", str(model_version)))


@dataclass(frozen=True)
class OutputLayout:
    """Where committed parts and the consolidated file of an output live (see the module docstring)."""

    output: Path

    @property
    def is_file(self) -> bool:
        return self.output.suffix.lower() == ".parquet" and not self.output.is_dir()

    @property
    def parts_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".parts") if self.is_file else self.output

    def parts(self) -> list[Path]:
        """Committed parts, in name order (shard, then sequence)."""
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.iterdir() if _PART_RE.match(p.name))

    def sources(self) -> list[Path]:
        """Every committed file: the consolidated output (if any) first, then the parts."""
        final = [self.output] if self.is_file and self.output.is_file() else []
        return final + self.parts()

    def next_sequence(self, tag: str) -> int:
        numbers = [int(m.group(3)) for p in self.parts() if (m := _PART_RE.match(p.name)) and p.name.startswith(tag)]
        return max(numbers, default=-1) + 1


def _shard_tag(shard: tuple[int, int]) -> str:
    return f"part-s{shard[0]:03d}of{shard[1]:03d}-"


def done_keys(output: Path | str) -> tuple[set[str], set[tuple[str, str]], pa.Schema | None]:
    """Keys already in the output, the model versions that wrote them, and the stored schema."""
    keys: set[str] = set()
    models: set[tuple[str, str]] = set()
    schema = None
    for source in OutputLayout(Path(output)).sources():
        table = pq.read_table(source, columns=["path", "model_name", "model_version"])
        keys.update(table.column("path").to_pylist())
        names = table.column("model_name").unique().to_pylist()
        versions = table.column("model_version").unique().to_pylist()
        models.update((n, v) for n in names for v in versions)
        schema = schema or pq.read_schema(source)
    return keys, models, schema


def read_output(output: Path | str) -> pd.DataFrame:
    """Every committed row of an output as it is stored (consolidated file first, then the parts)."""
    sources = OutputLayout(Path(output)).sources()
    if not sources:
        raise FileNotFoundError(f"no batch output at {output}")
    return pd.concat([pq.read_table(s).to_pandas() for s in sources], ignore_index=True)


def consolidate(output: Path | str) -> int:
    """Stream the committed parts of a ``.parquet`` output into the one file; returns its rows.

    Rows already in the file come first, a key is written once, memory holds one row group at a
    time; the file is replaced atomically and the parts folder removed. A folder output is left
    as it is (it is the dataset).
    """
    layout = OutputLayout(Path(output))
    if not layout.is_file:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in layout.parts())
    parts = layout.parts()
    if not parts:
        return pq.ParquetFile(layout.output).metadata.num_rows if layout.output.is_file() else 0
    tmp = layout.output.with_name(f".{layout.output.name}.tmp")
    seen: set[str] = set()
    rows = 0
    schema = pq.read_schema(parts[0])
    with open(tmp, "wb") as handle:
        with pq.ParquetWriter(handle, schema) as writer:
            for source in layout.sources():
                for batch in pq.ParquetFile(source).iter_batches(batch_size=65536):
                    table = pa.Table.from_batches([batch]).cast(schema)
                    keys = table.column("path").to_pylist()
                    keep = [k not in seen for k in keys]
                    seen.update(keys)
                    if not all(keep):
                        table = table.filter(pa.array(keep))
                    writer.write_table(table)
                    rows += table.num_rows
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, layout.output)
    shutil.rmtree(layout.parts_dir)
    return rows


def output_schema(classes: list[str], source: InputSource) -> pa.Schema:
    """The columns of every part of an output (the module docstring says what each holds)."""
    fields = [
        pa.field("path", pa.string()),
        pa.field("label", pa.string()),
        pa.field("confidence", pa.float32()),
        *(pa.field(f"{PROBABILITY_PREFIX}{c}", pa.float32()) for c in classes),
        *(pa.field(c, pa.string()) for c in STATUS_COLUMNS),
    ]
    if source.has_label:
        fields.append(pa.field(TRUE_LABEL, pa.string()))
    fields += [pa.field(c, pa.string()) for c in source.meta_columns]
    return pa.schema(fields)


# --- reading and preprocessing: a Dataset and a collate that carries errors -----------------------


@dataclass
class _Item:
    position: int  # index in this run's to-do list
    key: str
    tensor: torch.Tensor | None = None
    image: np.ndarray | None = None  # canonical pixels, kept only for the prediction log
    error: str | None = None
    code: str | None = None


@dataclass
class _Batch:
    positions: list[int]
    keys: list[str]
    ok: list[int]  # indexes (into keys) of the items that have a tensor
    tensor: torch.Tensor | None
    images: list[np.ndarray]
    errors: dict[int, tuple[str, str]]  # index → (reason, code)


class ImageFiles(Dataset):
    """Reads, validates (``canonicalize_image_bytes``) and preprocesses one file per item; never raises."""

    def __init__(
        self,
        source: InputSource,
        keys: list[str],
        transform: Any,
        *,
        channels: int,
        min_side: int,
        max_pixels: int,
        keep_images: bool = False,
    ) -> None:
        self.source = source
        self.keys = keys
        self.transform = transform
        self.channels = channels
        self.min_side = min_side
        self.max_pixels = max_pixels
        self.keep_images = keep_images

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> _Item:
        key = self.keys[position]
        item = _Item(position, key)
        try:
            with open(self.source.file(key), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            item.error, item.code = f"file not found: {key}", MISSING_FILE
            return item
        except OSError as exc:
            item.error, item.code = f"cannot read the file: {exc.strerror or exc}", UNREADABLE
            return item
        try:
            image = canonicalize_image_bytes(
                data, channels=self.channels, min_side=self.min_side, max_pixels=self.max_pixels
            ).array
            item.tensor = self.transform(image=as_hwc(image))["image"].float()
        except InvalidImage as exc:
            item.error, item.code = exc.reason, exc.code
            return item
        except Exception as exc:  # noqa: BLE001 - a decoder or transform failure costs this row only
            item.error, item.code = f"cannot preprocess the image: {type(exc).__name__}: {exc}", UNREADABLE
            return item
        if self.keep_images:
            item.image = image
        return item


def collate_items(items: list[_Item]) -> _Batch:
    """Stack the images that could be read; carry the others as errors."""
    ok = [i for i, item in enumerate(items) if item.tensor is not None]
    return _Batch(
        positions=[item.position for item in items],
        keys=[item.key for item in items],
        ok=ok,
        tensor=torch.stack([items[i].tensor for i in ok]) if ok else None,
        images=[items[i].image for i in ok if items[i].image is not None],
        errors={i: (item.error or "", item.code or UNREADABLE) for i, item in enumerate(items) if item.tensor is None},
    )


class _PartBatches:
    """Batches of positions that never straddle two parts, so a part is done when its last batch is."""

    def __init__(self, n: int, batch_size: int, part_size: int) -> None:
        self.n, self.batch_size, self.part_size = n, batch_size, part_size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.n, self.part_size):
            end = min(start + self.part_size, self.n)
            for first in range(start, end, self.batch_size):
                yield list(range(first, min(first + self.batch_size, end)))

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.part_size)
        return full * -(-self.part_size // self.batch_size) + -(-rest // self.batch_size)


# --- the job --------------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    """What one call did; ``skipped`` keys were already in the output."""

    output: str
    model_name: str
    model_version: str
    shard: tuple[int, int] | None
    total: int  # keys of this shard
    skipped: int
    ok: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    parts: int = 0  # parts committed by this call
    logged: int = 0  # rows written to the prediction log
    seconds: float = 0.0
    consolidated_rows: int | None = None  # rows of the final file, when this call consolidated

    @property
    def processed(self) -> int:
        return self.ok + self.errors

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "processed": self.processed, "images_per_second": round(self.images_per_second, 1)}


class _PartWriter:
    """Accumulates the rows of one part and commits it (log first, then the atomic rename)."""

    def __init__(
        self,
        layout: OutputLayout,
        shard: tuple[int, int],
        schema: pa.Schema,
        model: ServableModel,
        source: InputSource,
        log: PredictionLog | None,
    ) -> None:
        self.layout = layout
        self.tag = _shard_tag(shard)
        self.schema = schema
        self.model = model
        self.source = source
        self.log = log
        self.sequence = layout.next_sequence(self.tag)
        for stale in layout.parts_dir.glob(f".{self.tag}*.tmp"):  # left by an interrupted run of this shard
            stale.unlink(missing_ok=True)
        self.id_prefix = f"batch:{model.name}:{model.version}:{layout.output.resolve()}:"
        self.committed = 0
        self.logged = 0
        self._reset()

    def _reset(self) -> None:
        self.keys: list[str] = []
        self.probabilities: list[np.ndarray] = []  # one N×C array per batch, NaN rows for errors
        self.errors: list[str | None] = []
        self.codes: list[str | None] = []
        self.pending: list[tuple[list[str], list[np.ndarray], np.ndarray, np.ndarray]] = []

    def add(self, batch: _Batch, probabilities: np.ndarray, embeddings: np.ndarray) -> None:
        full = np.full((len(batch.keys), len(self.model.classes)), np.nan, dtype=np.float32)
        if batch.ok:
            full[batch.ok] = probabilities
        self.keys += batch.keys
        self.probabilities.append(full)
        for i in range(len(batch.keys)):
            reason, code = batch.errors.get(i, (None, None))
            self.errors.append(reason)
            self.codes.append(code)
        if self.log is not None and batch.ok:
            self.pending.append(([batch.keys[i] for i in batch.ok], batch.images, probabilities, embeddings))

    def commit(self) -> None:
        if not self.keys:
            return
        if self.log is not None:
            self.logged += self._log()
        table = self._table()
        directory = self.layout.parts_dir
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{self.tag}{self.sequence:06d}.parquet"
        tmp = directory / f".{name[:-len('.parquet')]}.tmp"
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / name)
        self.sequence += 1
        self.committed += 1
        self._reset()

    def _table(self) -> pa.Table:
        probabilities = np.concatenate(self.probabilities)
        error = np.isnan(probabilities).any(axis=1)
        filled = np.nan_to_num(probabilities, nan=0.0)
        classes = np.asarray(self.model.classes, dtype=object)
        n = len(self.keys)
        columns: dict[str, Any] = {
            "path": self.keys,
            "label": pa.array(np.where(error, None, classes[filled.argmax(axis=1)]), pa.string()),
            "confidence": pa.array(filled.max(axis=1), pa.float32(), mask=error),
        }
        for j, name in enumerate(self.model.classes):
            columns[f"{PROBABILITY_PREFIX}{name}"] = pa.array(filled[:, j], pa.float32(), mask=error)
        columns["status"] = pa.array(np.where(error, ERROR, OK), pa.string())
        columns["error"] = self.errors
        columns["error_code"] = self.codes
        columns["model_name"] = [self.model.name] * n
        columns["model_version"] = [str(self.model.version)] * n
        if self.source.has_label:
            columns[TRUE_LABEL] = [self.source.labels.get(k) for k in self.keys]
        for column in self.source.meta_columns:
            columns[column] = [self.source.meta.get(k, {}).get(column) for k in self.keys]
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _log(self) -> int:
        from visionloop.store.predlog import PendingPredictions, build_records

        assert self.log is not None
        created_at = datetime.now(UTC)
        records = []
        for keys, images, probabilities, embeddings in self.pending:
            ids = [str(uuid.uuid5(_ID_NAMESPACE, self.id_prefix + key)) for key in keys]
            pending = PendingPredictions(
                ids=ids,
                created_at=created_at,
                model_name=self.model.name,
                model_version=str(self.model.version),
                classes=self.model.classes,
                reduction=self.model.reduction,
                images=images,
                probabilities=probabilities,
                embeddings=embeddings,
                source="batch",
            )
            records += build_records(pending, [str(Path(self.source.file(k)).resolve()) for k in keys])
        existing = _logged_ids(self.log, [r.id for r in records])
        return self.log.write([r for r in records if r.id not in existing])


def _logged_ids(plog: PredictionLog, ids: list[str]) -> set[str]:
    """The ids among ``ids`` that the prediction log already holds."""
    import sqlalchemy as sa

    from visionloop.store.schema import predictions_table

    plog.ensure_schema()
    found: set[str] = set()
    with plog.engine.connect() as connection:
        for start in range(0, len(ids), _IN_QUERY):
            chunk = ids[start : start + _IN_QUERY]
            query = sa.select(predictions_table.c.id).where(predictions_table.c.id.in_(chunk))
            found.update(connection.execute(query).scalars())
    return found


def predict_batch(
    model: ServableModel,
    inputs: Path | str,
    output: Path | str,
    *,
    batch_size: int,
    num_workers: int = 0,
    log: PredictionLog | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    items: Sequence[str] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    min_side: int = 8,
    max_pixels: int = 25_000_000,
) -> BatchSummary:
    """Predict every input not yet in ``output`` and commit the rows part by part (module docstring).

    ``items`` are keys already listed by ``list_inputs`` (default: list ``inputs`` now); with
    ``shard=(i, n)`` only the keys of shard ``i`` are handled and nothing is consolidated.
    ``min_side`` and ``max_pixels`` are the image limits of ``visionloop.data.ingest``.
    """
    if batch_size < 1 or part_size < 1:
        raise ValueError(f"batch_size and part_size must be at least 1, got {batch_size} and {part_size}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    started = time.perf_counter()
    layout = OutputLayout(Path(output))
    source = InputSource.open(inputs)
    keys = list(items) if items is not None else source.list_keys([layout.output, layout.parts_dir])
    if items is None and not keys:
        raise ValueError(f"batch input {inputs} holds no files")
    if shard is not None:
        keys = shard_inputs(keys, shard[1])[shard[0]]
    schema = output_schema(model.classes, source)
    done, models, stored_schema = done_keys(layout.output)
    _check_compatible(layout.output, model, schema, models, stored_schema)
    todo = [k for k in keys if k not in done]
    summary = BatchSummary(
        output=str(layout.output),
        model_name=model.name,
        model_version=str(model.version),
        shard=shard,
        total=len(keys),
        skipped=len(keys) - len(todo),
    )
    if todo:
        _run(model, source, todo, layout, summary, schema, log, batch_size, num_workers, progress, part_size,
             min_side, max_pixels)
    if shard is None and layout.is_file:
        summary.consolidated_rows = consolidate(layout.output)
    summary.seconds = time.perf_counter() - started
    return summary


def _check_compatible(
    output: Path,
    model: ServableModel,
    schema: pa.Schema,
    models: set[tuple[str, str]],
    stored: pa.Schema | None,
) -> None:
    others = sorted(m for m in models if m != (model.name, str(model.version)))
    if others:
        held = ", ".join(f"{n} v{v}" for n, v in others)
        raise OutputConflict(
            f"{output} holds predictions of {held}; this run uses {model.name} v{model.version}. "
            "Write to another output (e.g. put {version} in its path) or delete it to start over."
        )
    if stored is not None and not stored.equals(schema):
        raise OutputConflict(
            f"{output} was written with other columns ({', '.join(stored.names)}); "
            "write to another output or delete it to start over"
        )


def _run(
    model: ServableModel,
    source: InputSource,
    todo: list[str],
    layout: OutputLayout,
    summary: BatchSummary,
    schema: pa.Schema,
    log: PredictionLog | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
    part_size: int,
    min_side: int,
    max_pixels: int,
) -> None:
    shard = summary.shard or (0, 1)
    dataset = ImageFiles(
        source,
        todo,
        model.transform,
        channels=int(model.config.get("in_channels", 1)),
        min_side=min_side,
        max_pixels=max_pixels,
        keep_images=log is not None,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=_PartBatches(len(todo), batch_size, part_size),
        collate_fn=collate_items,
        num_workers=num_workers,
    )
    writer = _PartWriter(layout, shard, schema, model, source, log)
    codes: Counter[str] = Counter()
    label = f"shard {shard[0]}/{shard[1]}" if summary.shard else "predict-batch"
    # inference mode around the loader too: the tensors the eval pipeline makes skip autograd bookkeeping
    with tqdm(total=len(todo), desc=label, unit="img", disable=not progress, file=sys.stderr,
              mininterval=0.5) as bar, torch.inference_mode():
        for batch in loader:
            if batch.tensor is not None:
                predictions = model.predict_tensor(batch.tensor)
                probabilities, embeddings = predictions.probabilities, predictions.embeddings
            else:
                probabilities = embeddings = np.zeros((0, 0), np.float32)
            writer.add(batch, probabilities, embeddings)
            codes.update(code for _, code in batch.errors.values())
            summary.ok += len(batch.ok)
            summary.errors += len(batch.errors)
            if (batch.positions[-1] + 1) % part_size == 0 or batch.positions[-1] + 1 == len(todo):
                writer.commit()
            bar.update(len(batch.keys))
    summary.parts = writer.committed
    summary.logged = writer.logged
    summary.error_codes = dict(codes)


# --- models ---------------------------------------------------------------------------------------


def pin_model_uri(model_uri: str, tracking_uri: str) -> tuple[str, str]:
    """Resolve ``models:/NAME@ALIAS`` (or ``models:/NAME/V``) to (name, version), so shards load one version."""
    from mlflow import MlflowClient

    from visionloop.models.bundle import parse_model_uri

    name, alias, version = parse_model_uri(model_uri)
    if alias is None:
        assert version is not None
        return name, version
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return name, str(client.get_model_version_by_alias(name, alias).version)


def bundle_version(bundle: Path | str) -> str:
    """A local bundle's identity (its weights' hash), so an output never mixes two local models."""
    from visionloop.contracts import BUNDLE_FILES

    digest = hashlib.sha256((Path(bundle) / BUNDLE_FILES["state_dict"]).read_bytes()).hexdigest()
    return f"sha256-{digest[:12]}"


def load_model(model_uri: str | None, tracking_uri: str, bundle: Path | str | None = None) -> ServableModel:
    """A local bundle folder if given, else the registered version at ``model_uri``."""
    from visionloop.models.bundle import ServableModel, load_registered

    if bundle is not None:
        return ServableModel.from_dir(bundle, name="local", version=bundle_version(bundle))
    if model_uri is None:
        raise ValueError("give a model URI (models:/NAME@ALIAS or models:/NAME/VERSION) or a bundle folder")
    return load_registered(model_uri, tracking_uri)
