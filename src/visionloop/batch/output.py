"""Where a batch job writes: Parquet parts committed whole, read back, and consolidated into one file.

Output rows (schema ``output_schema``)
    ``path`` (the key: relative to the input folder, or as written in the manifest), ``label``
    (predicted class), ``confidence``, one ``prob_<class>`` per class (float32), ``status``
    (``ok`` | ``error``), ``error`` (a reason a person can act on), ``error_code`` (the stable codes
    of ``visionloop.data.images``: ``empty``, ``not_an_image``, ``corrupt``, ``too_small``, ``too_large``,
    ``missing_file``, ``unreadable``), ``model_name``, ``model_version``, then ``true_label`` and the
    metadata columns of a manifest. Error rows have nulls in the prediction columns.

Output layout (the unit of progress is the *part*: a Parquet file of up to ``batch.part_size`` rows)
    * ``OUTPUT`` is a directory (any name not ending in ``.parquet``)::

          OUTPUT/part-s<i>of<n>-<seq>.parquet    committed parts (shard i of n, sequence number)
          OUTPUT/.part-s<i>of<n>-<seq>.tmp       a part being written (ignored by readers)

      It is a Parquet dataset: ``pandas.read_parquet(OUTPUT)`` reads every committed row.
    * ``OUTPUT`` ends in ``.parquet``: parts go to ``OUTPUT.parts/`` (same layout) and, once every
      input is done, ``consolidate`` streams them (after any rows already in ``OUTPUT``) into one
      file, written beside it and renamed over ``OUTPUT``, then removes ``OUTPUT.parts/``.

A part is written to a temporary name, fsynced and renamed (``commit_part``): it is committed whole
or not at all. One run writes a key at a time: a run claims the output, or its shard of it, in the
hidden ``claims_dir`` (``batch.claims``); an overlapping run on the same keys fails with ``OutputBusy``.

An output holds one model version: a run with another model refuses to write into it
(``OutputConflict``); put ``{model}`` / ``{version}`` in the output path (``expand_output``) to keep
one output per version.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from visionloop.batch.claims import claim
from visionloop.monitoring.features import PROBABILITY_PREFIX

OK = "ok"
ERROR = "error"
BASE_COLUMNS = ["path", "label", "confidence"]
STATUS_COLUMNS = ["status", "error", "error_code", "model_name", "model_version"]
TRUE_LABEL = "true_label"
_PART_RE = re.compile(r"^part-s(\d+)of(\d+)-(\d+)\.parquet$")


class OutputConflict(ValueError):
    """The output already holds predictions of another model version (or another input schema)."""


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

    @property
    def claims_dir(self) -> Path:
        """Where writers hold their claims (``batch.claims``): hidden, so neither a reader nor an input listing
        sees it; beside a ``.parquet`` output rather than in its parts folder, which consolidation removes."""
        if self.is_file:
            return self.output.with_name(f".{self.output.name}.claims")
        return self.output / ".claims"

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
        """The sequence number of the next part named ``tag…`` (after those already committed)."""
        numbers = [int(m.group(3)) for p in self.parts() if (m := _PART_RE.match(p.name)) and p.name.startswith(tag)]
        return max(numbers, default=-1) + 1

    def commit_part(self, tag: str, sequence: int, table: pa.Table) -> None:
        """Write one part under a temporary name, fsync it and rename it: committed whole or not at all."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        name = f"{tag}{sequence:06d}.parquet"
        tmp = self.parts_dir / f".{name[:-len('.parquet')]}.tmp"
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.parts_dir / name)

    def clear_uncommitted(self, tag: str) -> None:
        """Remove the temporary parts ``tag…`` an interrupted run left behind."""
        for stale in self.parts_dir.glob(f".{tag}*.tmp"):
            stale.unlink(missing_ok=True)


def shard_tag(shard: tuple[int, int]) -> str:
    """The name prefix of shard ``(i, n)``'s parts: shards write side by side without coordinating."""
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


def check_compatible(
    output: Path, model_name: str, model_version: str, schema: pa.Schema,
    models: set[tuple[str, str]], stored: pa.Schema | None,
) -> None:
    """Refuse (``OutputConflict``) to add rows of another model version or another schema to an output."""
    others = sorted(m for m in models if m != (model_name, model_version))
    if others:
        held = ", ".join(f"{n} v{v}" for n, v in others)
        raise OutputConflict(
            f"{output} holds predictions of {held}; this run uses {model_name} v{model_version}. "
            "Write to another output (e.g. put {version} in its path) or delete it to start over."
        )
    if stored is not None and not stored.equals(schema):
        raise OutputConflict(
            f"{output} was written with other columns ({', '.join(stored.names)}); "
            "write to another output or delete it to start over"
        )


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
    as it is (it is the dataset). Refused (``OutputBusy``) while a run writes to the output.
    """
    layout = OutputLayout(Path(output))
    with claim(layout.claims_dir, None, layout.output):
        return consolidate_claimed(layout)


def consolidate_claimed(layout: OutputLayout) -> int:
    """``consolidate`` for a caller that holds the whole output's claim already (an unsharded run)."""
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


def check_carried_columns(manifest: Path, columns: list[str]) -> None:
    """Refuse a manifest's metadata column named like a column of the output: it would be overwritten."""
    reserved = {*BASE_COLUMNS, *STATUS_COLUMNS, TRUE_LABEL}
    clashing = sorted(c for c in columns if c in reserved or c.startswith(PROBABILITY_PREFIX))
    if clashing:
        raise ValueError(f"{manifest}: column(s) {clashing} clash with the output's columns; rename them")


def output_schema(classes: list[str], has_label: bool, meta_columns: list[str]) -> pa.Schema:
    """The columns of every part of an output (the module docstring says what each holds)."""
    fields = [
        pa.field("path", pa.string()),
        pa.field("label", pa.string()),
        pa.field("confidence", pa.float32()),
        *(pa.field(f"{PROBABILITY_PREFIX}{c}", pa.float32()) for c in classes),
        *(pa.field(c, pa.string()) for c in STATUS_COLUMNS),
    ]
    if has_label:
        fields.append(pa.field(TRUE_LABEL, pa.string()))
    fields += [pa.field(c, pa.string()) for c in meta_columns]
    return pa.schema(fields)
