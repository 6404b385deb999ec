"""Warm-up inputs: what a session runs before it reports ready, and at which batch sizes.

Its own module so that loading (`lifecycle/loading.py`) and offline scoring
(`scoring/scorer.py`) share one definition without scoring importing the registry.
"""

from __future__ import annotations

import numpy as np

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.tabular import NUMPY_DTYPES, feeds_from_columns


def warmup_feeds(manifest: Manifest, rows: int) -> dict[str, np.ndarray]:
    """Typical inputs for `rows` rows: mid-range numbers, the first known category."""
    if manifest.features:
        columns: dict[str, np.ndarray] = {}
        for f in manifest.features:
            if f.dtype == "string":
                columns[f.name] = np.array([(f.categories or [""])[0]] * rows, dtype=object)
            else:
                mid = ((f.min or 0.0) + (f.max or 0.0)) / 2
                columns[f.name] = np.full(rows, mid)
        return feeds_from_columns(manifest, columns)
    feeds = {}
    for spec in manifest.inputs:
        shape = [rows if i == 0 else max(d, 1) for i, d in enumerate(spec.shape)]
        dtype = NUMPY_DTYPES[spec.datatype]
        feeds[spec.name] = np.full(shape, "", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
    return feeds


def warmup_sizes(max_batch_rows: int) -> list[int]:
    sizes = [1 << i for i in range(max_batch_rows.bit_length()) if 1 << i <= max_batch_rows]
    return sizes if sizes[-1] == max_batch_rows else [*sizes, max_batch_rows]
