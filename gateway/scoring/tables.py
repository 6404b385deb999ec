"""Tables in and out, a chunk at a time: CSV (optionally compressed) and Parquet, from a
local path or any fsspec URL (s3://, gs://, ...) where fsspec is installed.

Reading never holds more than one chunk per stage, and a chunk is bounded in bytes as
well as rows (a row of 500 KB cells is not a row of numbers): a CSV file is parsed in
blocks of a megabyte, gathered into chunks of at most CHUNK_BYTES; a Parquet file is read a
record batch at a time, its batch size from the row group's own size per row, and its text
columns stay dictionary-encoded (one 1 MiB value repeated in 200,000 rows is 1 MiB and
200,000 indices, never 200,000 copies). CSV columns are read as text and parsed by the
validator, so a bad value in row 5,000,000 rejects that row instead of stopping the
whole read (Arrow's streaming CSV reader fixes a column's type from its first block and
fails on any later block that disagrees). Writing a local file goes to a temporary name
that is renamed into place at the end, so a failed run never leaves a half-written output
behind.
"""

from __future__ import annotations

import collections
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
# Decoded bytes of one chunk, whatever its row count: some seven are in flight at once
# (reader queue, validation, writer queue; measured). 65,536 rows of 30 numbers are 15 MiB.
CHUNK_BYTES = 16 << 20
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
        _refuse_repeats(self.location, names, self.columns)
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
        return _rebatch(reader, self.chunk_rows, CHUNK_BYTES)

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
        schema = pq.ParquetFile(self._raw).schema_arrow
        _refuse_repeats(self.location, schema.names, self.columns)
        present = [c for c in self.columns if schema.get_field_index(c) >= 0]
        text = [c for c in present if _is_text(schema.field(c).type)]
        parquet = pq.ParquetFile(self._raw, read_dictionary=text)
        self.schema = parquet.schema_arrow
        self.total_rows = parquet.metadata.num_rows
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
                    batch_size=self._batch_rows(parquet, run), row_groups=run, columns=columns,
                    use_threads=True,
                )  # fmt: skip
                run, rows = [], 0

    def _batch_rows(self, parquet: Any, groups: list[int]) -> int:
        """Rows per batch: `chunk_rows`, fewer where the row groups' uncompressed bytes per
        row say that many would pass CHUNK_BYTES."""
        meta = [parquet.metadata.row_group(g) for g in groups]
        rows, size = sum(m.num_rows for m in meta), sum(m.total_byte_size for m in meta)
        per_row = size / rows if rows else 0
        return max(1, min(self.chunk_rows, int(CHUNK_BYTES // per_row) if per_row else self.chunk_rows))

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


def _refuse_repeats(location: str, names: Sequence[str], wanted: Sequence[str]) -> None:
    """A column the run reads may appear once: which of two is meant cannot be told (the
    records API refuses a repeated key for the same reason)."""
    counts = collections.Counter(names)
    repeated = sorted(n for n in set(wanted) if counts[n] > 1)
    if repeated:
        raise TableError(
            f"{location}: column {', '.join(map(repr, repeated))} appears more than once; "
            "rename or drop the copies"
        )


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int, max_bytes: int) -> Iterator[pa.Table]:
    """Small batches gathered into tables of about `rows` rows, or fewer that reach
    `max_bytes`."""
    pending: list[pa.RecordBatch] = []
    count = size = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        size += batch.nbytes
        if count >= rows or size >= max_bytes:
            yield pa.Table.from_batches(pending)
            pending, count, size = [], 0, 0
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
