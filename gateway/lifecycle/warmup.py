"""Warm-up: run a new version before it takes requests, at every batch size the batcher
will form, so that the first requests do not pay for allocations and kernel choices, and
measure which sizes are cheap enough to run on the event loop.

Policy. Values come from the manifest where it has them: a tabular model's features
(mid-range numbers, the first known category), the inputs the converter's parity check
proved, so a failure there is a broken model and refuses the version. A model given as
plain ONNX has no such sample: it gets values made up here (zeros, "0" strings, fixed
dimensions as declared and 1 for variable ones, rows only where there is a batch
dimension). A graph may refuse made-up values that say nothing of the requests it will
get (a string it parses as a date, an index it gathers by, a shape it reshapes to), so a
warm-up failing on them leaves the model served and not warmed, with a log line saying
so: never unloadable for want of a good guess.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from gateway.artifacts.manifest import Manifest, TensorSpec
from gateway.artifacts.tabular import NUMPY_DTYPES, feeds_from_columns
from gateway.errors import first_line
from gateway.runtime import ModelLoadError, Runtime

log = logging.getLogger("gateway.warmup")


def warmup_sizes(max_batch_rows: int) -> list[int]:
    sizes = [1 << i for i in range(max_batch_rows.bit_length()) if 1 << i <= max_batch_rows]
    return sizes if sizes[-1] == max_batch_rows else [*sizes, max_batch_rows]


def warmup_feeds(manifest: Manifest, rows: int) -> dict[str, np.ndarray]:
    """Typical inputs for `rows` rows: the manifest's features where it has them, else
    values of the graph's own types and shapes (`rows` is ignored without a batch dim)."""
    if manifest.features:
        columns: dict[str, np.ndarray] = {}
        for f in manifest.features:
            if f.dtype == "string":
                columns[f.name] = np.array([(f.categories or [""])[0]] * rows, dtype=object)
            else:
                mid = ((f.min or 0.0) + (f.max or 0.0)) / 2
                columns[f.name] = np.full(rows, mid)
        return feeds_from_columns(manifest, columns)
    batched = manifest.batched
    return {spec.name: _made_up(spec, rows if batched else None) for spec in manifest.inputs}


def _made_up(spec: TensorSpec, rows: int | None) -> np.ndarray:
    """Zeros (or "0", which a graph that parses its strings as numbers accepts)."""
    dims = [max(d, 1) for d in (spec.reshape if spec.reshape is not None else spec.shape)]
    shape = dims if rows is None else [rows, *dims[1:]]
    dtype = NUMPY_DTYPES[spec.datatype]
    return np.full(shape, "0", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)


def warm_up(runtime: Runtime, manifest: Manifest, max_batch_rows: int, inline_budget_s: float) -> int:
    """Run every batch size the batcher will form; return the largest number of rows whose
    batch (and every smaller one) ran within the inline budget, 0 when none did or when
    the model could not be warmed. Raises ModelLoadError only for a manifest's own sample."""
    inline_rows, within_budget = 0, True
    for rows in warmup_sizes(max_batch_rows) if manifest.batched else [1]:
        feeds = warmup_feeds(manifest, rows)
        try:
            runtime.run(feeds)
            started = time.perf_counter()
            runtime.run(feeds)
            took = time.perf_counter() - started
        except Exception as exc:  # whatever the runtime raised: the policy decides
            if manifest.features:
                raise ModelLoadError(f"warm-up at {rows} rows failed: {first_line(exc)}") from exc
            log.warning(
                "served without warm-up: the graph refused made-up inputs",
                extra={"event": "warmup_skipped", "model": manifest.name, "version": manifest.version,
                       "rows": rows, "error": first_line(exc, 300)},
            )  # fmt: skip
            return 0  # its costs are unknown: never on the event loop
        within_budget &= took <= inline_budget_s
        if within_budget:
            inline_rows = rows
    return inline_rows
