"""Offline batch scoring: a table in, predictions out, a chunk at a time.

The model is the repository's verified artifact (sha256 checked, as the server loads it)
in the server's ONNX Runtime session (`OrtRuntime`), given every usable core. Rows are
validated as the records API validates them; those that fail go to the rejects file with
their row number and the reason, never silently dropped.

Three stages overlap: a reader thread parses the next chunk while the model runs on this
one and a writer thread writes the last; the queues between them hold two chunks each, so
memory stays bounded by the chunk size whatever the table's size.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.remote import open_repository
from gateway.runtime import OrtRuntime
from gateway.scoring.columns import Checked, ColumnCodec, SchemaMismatch
from gateway.scoring.progress import Mode, Progress
from gateway.scoring.tables import Format, TableReader, TableWriter, detect_format
from gateway.settings import Provider, RangePolicyOverride, usable_cpus

DEFAULT_CHUNK_ROWS = 65_536
DEFAULT_BATCH_ROWS = 4_096
_QUEUE_CHUNKS = 2
T = TypeVar("T")


class ScoreError(ValueError):
    """The run cannot go on: the message says why (the input, the output or the model)."""


@dataclass(frozen=True)
class ScoreReport:
    rows: int
    scored: int
    rejected: int
    seconds: float
    output: str
    rejects: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Scorer:
    """One model, ready to score Arrow batches: validation, session, output columns."""

    def __init__(
        self,
        manifest: Manifest,
        model: bytes,
        *,
        provider: Provider = "auto",
        threads: int = 0,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        range_policy: RangePolicyOverride = "manifest",
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        self.manifest = manifest
        self.codec = ColumnCodec(manifest, range_policy)
        self.batch_rows = batch_rows
        self.runtime = OrtRuntime(
            model, provider=provider, threads=threads or usable_cpus(), name=manifest.name
        )
        from gateway.lifecycle.warmup import warmup_feeds

        # One run before the first chunk warms the session and fixes the output types,
        # even when the first chunk's rows are all rejected.
        sample = self.codec.encode(self.runtime.run(warmup_feeds(manifest, 2)))
        self.prediction_schema = pa.schema([(n, pa.array(v).type) for n, v in sample.items()])

    @classmethod
    def from_repository(
        cls, repo: str | Path, name: str, version: str | None = None, **options: Any
    ) -> Scorer:
        """Load `name:version` (the live version when None) after checking its sha256."""
        repository = open_repository(repo)
        manifest, data = repository.load_verified(name, version or repository.live_version(name))
        return cls(manifest, data, **options)

    def predict(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Prediction columns for checked feature columns, run `batch_rows` rows at a time
        (a whole chunk in one run would size the model's intermediate tensors by the chunk)."""
        rows = len(next(iter(columns.values())))
        step, codec = self.batch_rows, self.codec
        parts = [self.runtime.run(codec.feeds(columns, i, i + step)) for i in range(0, rows, step)]
        if len(parts) == 1:
            return codec.encode(parts[0])
        return codec.encode({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    def score(self, batch: pa.RecordBatch | pa.Table) -> tuple[Checked, pa.Table]:
        """Validate one batch, predict its good rows; the predictions as an Arrow table."""
        checked = self.codec.check(batch)
        if checked.good.size == 0:
            return checked, self.prediction_schema.empty_table()
        columns = self.predict(checked.columns)
        arrays = [pa.array(columns[f.name], f.type) for f in self.prediction_schema]
        return checked, pa.Table.from_arrays(arrays, schema=self.prediction_schema)


def default_rejects_path(output: str) -> str:
    base = output
    for suffix in (".gz", ".bz2", ".zst", ".lz4", ".csv", ".parquet", ".pq"):
        base = base.removesuffix(suffix)
    return f"{base}.rejects.csv"


def _in_background(items: Iterator[T], size: int) -> Iterator[T]:
    """Run an iterator in a thread, `size` items ahead; its exception comes out here."""
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(size)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((False, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put((False, exc))

    thread = threading.Thread(target=run, name="score-reader", daemon=True)
    thread.start()
    try:
        while True:
            more, item = q.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join(5)


class _Writers:
    """The output and rejects files, written in a thread behind a bounded queue."""

    def __init__(self, output: TableWriter, rejects: TableWriter) -> None:
        self._q: queue.Queue[tuple[pa.Table, pa.Table] | None] = queue.Queue(_QUEUE_CHUNKS)
        self._writers = (output, rejects)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="score-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.error is not None:
                continue  # drain, so the producer never blocks on a dead writer
            try:
                for writer, table in zip(self._writers, item, strict=True):
                    for batch in table.to_batches():
                        writer.write(batch)
            except BaseException as exc:
                self.error = exc

    def put(self, scored: pa.Table, rejected: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        self._q.put((scored, rejected))

    def close(self, ok: bool) -> None:
        self._q.put(None)
        self._thread.join()
        if ok and self.error is None:
            for writer in self._writers:
                writer.close()
            return
        for writer in self._writers:
            writer.abort()
        if self.error is not None and ok:
            raise self.error


@dataclass
class _Plan:
    """What a run reads and writes, checked before the first row is read."""

    reader: TableReader
    keep: list[str]
    output: pa.Schema
    rejects: pa.Schema


def _plan(scorer: Scorer, source: str, keep: Sequence[str], chunk_rows: int, fmt: Format | None) -> _Plan:
    from gateway.scoring.tables import TableError

    if chunk_rows < 1:
        raise ScoreError("chunk_rows must be at least 1")
    keep = list(dict.fromkeys(keep))
    clash = sorted(set(keep) & set(scorer.prediction_schema.names))
    if clash:
        raise ScoreError(f"--keep {', '.join(clash)}: the predictions use that name; rename the column")
    try:
        reader = TableReader(source, [*scorer.codec.feature_names, *keep], chunk_rows=chunk_rows, fmt=fmt)
    except TableError as exc:
        raise ScoreError(str(exc)) from exc
    try:
        scorer.codec.check_schema(reader.schema)
        missing = [c for c in keep if reader.schema.get_field_index(c) < 0]
        if missing:
            raise ScoreError(f"--keep {', '.join(missing)}: no such column")
    except (SchemaMismatch, ScoreError) as exc:
        reader.close()
        raise ScoreError(f"{source}: {exc}") from exc
    kept = [reader.schema.field(c) for c in keep]
    return _Plan(
        reader,
        keep,
        pa.schema([*kept, *scorer.prediction_schema]),
        pa.schema([("row", pa.int64()), ("field", pa.string()), ("reason", pa.string()), *kept]),
    )


def _split(
    scorer: Scorer, plan: _Plan, batch: pa.RecordBatch | pa.Table, first_row: int
) -> tuple[pa.Table, pa.Table]:
    """One chunk as its output rows (kept columns + predictions) and its rejects rows."""
    checked, predictions = scorer.score(batch)
    source = (batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])).select(plan.keep)
    scored = pa.Table.from_arrays(
        [*source.take(checked.good).columns, *predictions.columns], schema=plan.output
    )
    rejected = pa.Table.from_arrays(
        [
            pa.array(checked.rejected + first_row, pa.int64()),
            pa.array(checked.field, pa.string()),
            pa.array(checked.reason, pa.string()),
            *source.take(checked.rejected).columns,
        ],
        schema=plan.rejects,
    )
    return scored, rejected


def score_file(
    scorer: Scorer,
    source: str,
    destination: str,
    *,
    keep: Sequence[str] = (),
    rejects: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    input_format: Format | None = None,
    output_format: Format | None = None,
    progress: Mode = "auto",
    progress_every: float = 10.0,
    stream: TextIO | None = None,
) -> ScoreReport:
    """Score every row of `source` into `destination` (kept columns, then predictions);
    rejected rows go to `rejects` (CSV: row, field, reason, kept columns), always written."""
    from gateway.scoring.tables import TableError

    started = time.monotonic()
    rejects = rejects or default_rejects_path(destination)
    try:
        detect_format(destination, output_format)
    except TableError as exc:
        raise ScoreError(str(exc)) from exc
    plan = _plan(scorer, source, keep, chunk_rows, input_format)
    rows = rejected = 0
    try:
        try:
            writers = _Writers(
                TableWriter(destination, plan.output, output_format),
                TableWriter(rejects, plan.rejects, "csv"),
            )
        except TableError as exc:
            raise ScoreError(str(exc)) from exc
        meter = Progress(plan.reader.total_rows, plan.reader.total_bytes, progress, progress_every, stream)
        ok = False
        try:
            for chunk in _in_background(iter(plan.reader), _QUEUE_CHUNKS):
                scored, bad = _split(scorer, plan, chunk.batch, chunk.first_row)
                writers.put(scored, bad)
                rows += chunk.batch.num_rows
                rejected += bad.num_rows
                meter.update(rows, rejected, chunk.position)
            ok = True
        except TableError as exc:
            raise ScoreError(str(exc)) from exc
        finally:
            try:
                writers.close(ok)
            except (TableError, OSError, pa.ArrowException) as exc:
                raise ScoreError(f"{destination}: write failed: {exc}") from exc
        meter.finish()
    finally:
        plan.reader.close()
    return ScoreReport(rows, rows - rejected, rejected, time.monotonic() - started, destination, rejects)
