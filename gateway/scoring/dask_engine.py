"""The same scorer on a Dask cluster: `score_dataframe(ddf, repo, name)` maps every
partition through `score_partition`, which scores it exactly as `gateway score` scores a
chunk (same validation, same session settings, same output columns).

Why Dask: it is the engine a pandas team reaches for first (its partitions are pandas
frames, `LocalCluster` runs on a laptop and the same code runs on Kubernetes, YARN or a
cloud cluster), it installs from PyPI with no JVM (Spark) and no cluster runtime that
calls out at start-up (Ray contacts a cloud metadata address unless told not to), and
`map_partitions` is a plain function over a pandas frame, the smallest adapter there is.

Each worker process loads the verified artifact once (sha256 checked, and pinned: the
version and sha256 are resolved when the graph is built, so a promotion mid-job cannot
mix two models in one output) and keeps it for every partition it scores afterwards.
Rejected rows are kept in place with their reason, never dropped: a partition keeps its
index and its length, and `reason` is null on every scored row.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from gateway.artifacts.remote import open_repository
from gateway.scoring.scorer import ScoreError, Scorer

if TYPE_CHECKING:
    import pandas as pd

REJECT_COLUMNS = ("field", "reason")
# Integer and boolean predictions keep their type with nulls on rejected rows.
_NULLABLE: dict[Any, Any] = {}
_scorers: dict[tuple[Any, ...], Scorer] = {}
_lock = threading.Lock()


def _scorer(repo: str, name: str, version: str, sha256: str, threads: int, batch_rows: int) -> Scorer:
    """The process's scorer for this model, loaded (and verified) on first use."""
    key = (repo, name, version, sha256, threads, batch_rows)
    with _lock:  # a worker's threads share one session; ONNX Runtime's run is thread-safe
        scorer = _scorers.get(key)
        if scorer is None:
            scorer = Scorer.from_repository(repo, name, version, threads=threads, batch_rows=batch_rows)
            if scorer.manifest.onnx.sha256 != sha256:
                raise ScoreError(
                    f"{name}:{version} in {repo} is not the artifact the job was planned with "
                    f"(sha256 {scorer.manifest.onnx.sha256[:12]}…, expected {sha256[:12]}…)"
                )
            _scorers[key] = scorer
    return scorer


def loaded_models() -> int:
    """How many artifacts this process has loaded: one per model and options, never one
    per partition (nothing is evicted, so this counts every load)."""
    return len(_scorers)


def score_partition(
    frame: pd.DataFrame,
    repo: str,
    name: str,
    version: str,
    sha256: str,
    keep: tuple[str, ...] = (),
    threads: int = 1,
    batch_rows: int = 4_096,
) -> pd.DataFrame:
    """One pandas partition in, same index out: kept columns, predictions, and the field
    and reason of each rejected row (null where the row was scored)."""
    import pandas as pd

    if not _NULLABLE:
        _NULLABLE.update(
            {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}
        )
    scorer = _scorer(repo, name, version, sha256, threads, batch_rows)
    features = [c for c in scorer.codec.feature_names if c in frame.columns]
    table = pa.Table.from_pandas(frame[features], preserve_index=False)
    scorer.codec.check_schema(table.schema)
    checked, predictions = scorer.score(table)
    out = frame[list(keep)].copy()
    # Each scored row's place among the predictions; null (a null prediction) where rejected.
    where = np.full(len(frame), -1)
    where[checked.good] = np.arange(len(checked.good))
    index = pa.array(where, mask=where < 0)
    for column in predictions.column_names:
        values = predictions.column(column).take(index)
        out[column] = values.to_pandas(types_mapper=_NULLABLE.get).set_axis(frame.index)
    for column, per_row in zip(REJECT_COLUMNS, (checked.field, checked.reason), strict=True):
        values = np.full(len(frame), None, dtype=object)
        values[checked.rejected] = per_row
        # A string dtype, not object: Dask's Parquet writer plans its schema from it.
        out[column] = pd.array(values, dtype=pd.StringDtype())
    return out


def score_dataframe(
    ddf: Any,
    repo: str | Path,
    name: str,
    version: str | None = None,
    *,
    keep: tuple[str, ...] = (),
    threads: int = 1,
    batch_rows: int = 4_096,
) -> Any:
    """A Dask DataFrame of kept columns, predictions, `field` and `reason`, partition by
    partition. `threads` is ONNX Runtime's per task: Dask already runs a task per core."""
    repository = open_repository(repo)
    version = version or repository.live_version(name)
    manifest = repository.manifest(name, version)
    # The output's empty frame, for Dask to plan with, from a partition of no rows.
    args = (str(repo), name, version, manifest.onnx.sha256, keep, threads, batch_rows)
    meta = score_partition(ddf._meta, *args)
    return ddf.map_partitions(score_partition, *args, meta=meta)
