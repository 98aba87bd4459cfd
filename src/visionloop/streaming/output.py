"""Where per-frame answers go: JSON lines (stdout or a ``.jsonl`` file) or a Parquet file.

One row per classified frame: ``stream_id``, ``frame_index``, ``timestamp`` (seconds of stream time),
``prediction_id`` (the prediction log's id), ``model_version``, ``label``, ``confidence`` and the
probabilities (a ``probabilities`` object in JSON lines, ``prob_<class>`` columns in Parquet, as
``predict-batch`` writes them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

PARQUET_FLUSH_ROWS = 4096  # rows per Parquet row group: memory stays flat on a long stream


class Sink(Protocol):
    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line, flushed per batch (a consumer of stdout sees answers as they come)."""

    def __init__(self, path: Path | None) -> None:
        self._file: TextIO = open(path, "w", encoding="utf-8") if path is not None else sys.stdout  # noqa: SIM115
        self._own = path is not None

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(row) + "\n" for row in rows))
        self._file.flush()

    def close(self) -> None:
        if self._own:
            self._file.close()


class ParquetSink:
    """Rows buffered and written a row group at a time; the file is complete once ``close`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: list[dict[str, Any]] = []
        self._writer: Any = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            flat = {k: v for k, v in row.items() if k != "probabilities"}
            flat.update({f"prob_{name}": p for name, p in row["probabilities"].items()})
            self._rows.append(flat)
        if len(self._rows) >= PARQUET_FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))
        self._rows = []

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()


def open_sink(output: str | None) -> Sink:
    """``None`` or ``-``: JSON lines on stdout; ``*.parquet``: Parquet; any other path: JSON lines."""
    if output is None or output == "-":
        return JsonLinesSink(None)
    path = Path(output)
    if path.suffix.lower() == ".parquet":
        return ParquetSink(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JsonLinesSink(path)
