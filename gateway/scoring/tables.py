"""Tables in and out, a chunk at a time: CSV (optionally compressed) and Parquet, from a
local path or any fsspec URL (s3://, gs://, ...) where fsspec is installed.

Reading never holds more than one chunk per stage: a CSV file is parsed in blocks of a
few megabytes, a Parquet file a record batch at a time (one row group's column chunks at
most). CSV columns are read as text and parsed by the validator, so a bad value in row
5,000,000 rejects that row instead of stopping the whole read (Arrow's streaming CSV
reader fixes a column's type from its first block and fails on any later block that
disagrees). Writing a local file goes to a temporary name that is renamed into place at
the end, so a failed run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.csv as pacsv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

Format = Literal["csv", "parquet"]
# Empty is null (pandas writes NaN as empty); so are the usual spellings of a missing value.
NULLS = ["", "NA", "N/A", "NULL", "null"]
# Arrow's streaming CSV reader parses ahead of its consumer by some tens of blocks (measured
# with pyarrow 25: 38 MiB blocks held 622 MiB of a 563 MiB file at once; 1 MiB blocks about
# 35 MiB): so small blocks, gathered into chunks here.
CSV_BLOCK = 1 << 20
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}


class TableError(ValueError):
    """The input cannot be opened or read, or the output cannot be written."""


def detect_format(location: str, given: Format | None = None) -> Format:
    if given is not None:
        return given
    name = location.lower()
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise TableError(f"{location}: cannot tell the format from the name; say --format csv|parquet")


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> str:
    return location.removeprefix("file://")


def _open_remote(location: str, mode: str) -> Any:
    try:
        import fsspec
    except ImportError:
        raise TableError(f"{location}: URLs need fsspec: pip install 'onnx-gateway[remote]'") from None
    try:
        return fsspec.open(location, mode).open()
    except (ImportError, ValueError, OSError) as exc:
        raise TableError(f"{location}: {exc}") from exc


@dataclass
class Chunk:
    batch: pa.RecordBatch | pa.Table
    first_row: int  # the input row number of the batch's first row, counted from 0
    position: int | None  # bytes of the input consumed so far, where that can be known


class TableReader:
    """The input, as record batches of about `chunk_rows` rows, with what progress needs."""

    def __init__(
        self,
        location: str,
        columns: Sequence[str],
        *,
        chunk_rows: int,
        fmt: Format | None = None,
    ) -> None:
        self.location = location
        self.format = detect_format(location, fmt)
        self.columns = list(dict.fromkeys(columns))
        self.chunk_rows = chunk_rows
        self.total_rows: int | None = None
        self.total_bytes: int | None = None
        self._raw: Any = None
        try:
            self._raw = self._open()
        except (FileNotFoundError, pa.ArrowIOError, OSError) as exc:
            raise TableError(f"{location}: cannot open: {exc}") from exc
        with contextlib.suppress(OSError, TypeError, ValueError):
            size = getattr(self._raw, "size", None)  # a method on Arrow files, a number on fsspec's
            self.total_bytes = int(size() if callable(size) else size)  # type: ignore[arg-type]
        try:
            self._batches: Iterator[pa.RecordBatch | pa.Table] = (
                self._open_csv() if self.format == "csv" else self._open_parquet()
            )
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            self.close()
            raise TableError(f"{location}: not a readable {self.format} file: {exc}") from exc

    def _open(self) -> Any:
        location = self.location
        return _open_remote(location, "rb") if _is_url(location) else pa.OSFile(_local(location))

    def _open_csv(self) -> Iterator[pa.Table]:
        compression = next((c for s, c in _COMPRESSION.items() if self.location.lower().endswith(s)), None)
        head = self._head(compression)
        try:
            names = next(csv.reader(io.StringIO(head.decode("utf-8", errors="replace"))))
        except (StopIteration, csv.Error) as exc:
            raise TableError(f"{self.location}: no CSV header line") from exc
        # Arrow refuses a missing included column outright; leaving it out lets the
        # validator name every missing column at once.
        present = [c for c in self.columns if c in set(names)]
        stream = pa.CompressedInputStream(self._raw, compression) if compression else self._raw
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK, use_threads=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=present,
                column_types=dict.fromkeys(present, pa.string()),
                null_values=NULLS,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        self.schema = reader.schema
        return _rebatch(reader, self.chunk_rows)

    def _head(self, compression: str | None) -> bytes:
        """The first MiB of the text, for the header line."""
        if compression is None:
            head = bytes(self._raw.read(1 << 20))
            self._raw.seek(0)
            return head
        raw = self._open()  # a compressed stream cannot seek back: read a second one
        try:
            return bytes(pa.CompressedInputStream(raw, compression).read(1 << 20))
        finally:
            raw.close()

    def _open_parquet(self) -> Iterator[pa.RecordBatch]:
        parquet = pq.ParquetFile(self._raw)
        self.schema = parquet.schema_arrow
        self.total_rows = parquet.metadata.num_rows
        present = [c for c in self.columns if self.schema.get_field_index(c) >= 0]
        return self._parquet_batches(parquet, present)

    def _parquet_batches(self, parquet: Any, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """One reader per run of row groups of about a chunk: a single `iter_batches` over
        the whole file keeps what it decoded until it ends (measured with pyarrow 25:
        +16 MiB per 65,536-row batch; apache/arrow#39808 reports the same of datasets)."""
        run: list[int] = []
        rows = 0
        groups = parquet.metadata.num_row_groups
        for group in range(groups):
            run.append(group)
            rows += parquet.metadata.row_group(group).num_rows
            if rows >= self.chunk_rows or group == groups - 1:
                yield from parquet.iter_batches(
                    batch_size=self.chunk_rows, row_groups=run, columns=columns, use_threads=True
                )
                run, rows = [], 0

    def __iter__(self) -> Iterator[Chunk]:
        first = 0
        try:
            for batch in self._batches:
                if batch.num_rows == 0:
                    continue
                position = None
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    position = int(self._raw.tell())
                yield Chunk(batch, first, position)
                first += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise TableError(f"{self.location}: read failed near row {first}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Small batches gathered into tables of about `rows` rows."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


class TableWriter:
    """Batches of one schema into a CSV or Parquet file, published whole at `close()`."""

    def __init__(self, location: str, schema: pa.Schema, fmt: Format | None = None) -> None:
        self.location = location
        self.format = detect_format(location, fmt)
        self._tmp: str | None = None
        try:
            if _is_url(location):
                self._sink = _open_remote(location, "wb")
            else:
                target = Path(_local(location))
                fd, self._tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
                os.close(fd)
                self._sink = pa.OSFile(self._tmp, "wb")
            self._writer: Any = (
                pacsv.CSVWriter(self._sink, schema)
                if self.format == "csv"
                else pq.ParquetWriter(self._sink, schema, compression="zstd")
            )
        except (pa.ArrowIOError, OSError) as exc:
            self.abort()
            raise TableError(f"{location}: cannot write: {exc}") from exc

    def write(self, batch: pa.RecordBatch) -> None:
        if self.format == "csv":
            self._writer.write_batch(batch)
        else:
            self._writer.write_batch(batch, row_group_size=batch.num_rows)

    def close(self) -> None:
        """Finish the file and move it into place."""
        self._writer.close()
        self._sink.close()
        if self._tmp is not None:
            os.replace(self._tmp, _local(self.location))
            self._tmp = None

    def abort(self) -> None:
        """Drop what was written; the destination is left as it was."""
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._sink.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None
