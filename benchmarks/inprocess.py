"""The compute ceiling: ONNX Runtime in-process, rows/s at each batch size, on one thread
(the gateway's session on one core gets the same)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.repository import Repository
from gateway.artifacts.tabular import feeds_from_columns


def one_thread_session(
    repo: Path, name: str, provider: str = "CPUExecutionProvider"
) -> tuple[Manifest, ort.InferenceSession]:
    """Version 1 of `name` in a plain ONNX Runtime session on one thread."""
    manifest, data = Repository(repo).load_verified(name, "1")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return manifest, ort.InferenceSession(data, sess_options=options, providers=[provider])


def rows_per_second(repo: Path, name: str, batch_sizes: list[int], seconds: float,
                    provider: str = "CPUExecutionProvider") -> dict[int, float]:  # fmt: skip
    manifest, session = one_thread_session(repo, name, provider)
    return measure(manifest, lambda feeds: session.run(None, feeds), batch_sizes, seconds)


def rows_per_second_on(repo: Path, name: str, feeds: dict[str, np.ndarray], seconds: float) -> float:
    """Rows/s of one ONNX Runtime thread on exactly `feeds` (a tree ensemble's speed depends
    on the rows it walks)."""
    _, session = one_thread_session(repo, name)
    session.run(None, feeds)
    rows: int = next(iter(feeds.values())).shape[0]
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        runs += 1
    return runs * rows / (time.perf_counter() - started)


def measure(
    manifest: Manifest, run: Callable[[dict[str, np.ndarray]], object], batch_sizes: list[int],
    seconds: float, warmups: int = 1,
) -> dict[int, float]:  # fmt: skip
    """Rows/s of `run` on in-range random inputs at each batch size, `seconds` each."""
    rng = np.random.default_rng(0)
    out = {}
    for batch in batch_sizes:
        columns = {f.name: rng.uniform(f.min or 0, f.max or 1, batch) for f in manifest.features}
        feeds = feeds_from_columns(manifest, columns)
        for _ in range(warmups):
            run(feeds)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run(feeds)
            runs += 1
        out[batch] = runs * batch / (time.perf_counter() - started)
    return out
