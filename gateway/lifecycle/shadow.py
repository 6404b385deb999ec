"""Shadow traffic: live requests mirrored to a candidate version off the hot path.

The live answer is sent before the candidate sees the request: the front door hands the
request's inputs and live outputs to `offer`, which only queues them (a queue bounded in
requests and in the bytes they hold; beyond either, or while the live version has rows
waiting, the copy is dropped and counted with its reason). A worker task
runs the candidate on its own batcher and compares: label agreement for classifiers,
|Δ| of probabilities (the largest per row) or of values for regressors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gateway.artifacts.tabular import NUMPY_DTYPES
from gateway.errors import clip_message
from gateway.observability.instruments import DIFF_BUCKETS
from gateway.types import Arrays

if TYPE_CHECKING:
    from gateway.lifecycle.loading import LoadedModel
    from gateway.observability.telemetry import Telemetry

log = logging.getLogger("gateway.shadow")

QUEUE_REQUESTS = 256  # mirrored requests waiting for the candidate; more are dropped
# Bytes those requests may hold (Settings.shadow_max_bytes): the live answer is already
# sent, so no admission limit sees them, and 256 requests of 16 MiB would be 4 GiB.
BUDGET_BYTES = 64 * 1024 * 1024
TIMEOUT_S = 30.0  # a candidate that takes longer for one request has its answer dropped
# After the shadow yielded to live traffic, offers are dropped at once for this long: under
# saturation a queued mirror is almost always dropped anyway, and queueing it (and waking
# the worker to drop it) costs the live path more than counting it.
BACKOFF_S = 0.02
BLOCK_ELEMENTS = 1 << 17  # values compared at once: 1 MiB of float64 scratch


def held_bytes(*groups: Arrays) -> int:
    """What queueing these arrays keeps alive: their buffers (a view of a request body
    holds as much of it), and the elements of object arrays (BYTES tensors)."""
    total = 0
    for arrays in groups:
        for array in arrays.values():
            total += array.nbytes
            if array.dtype.kind == "O":
                total += sum(len(x) for x in array.flat if isinstance(x, bytes | str))
    return total


def row_diffs(ours: np.ndarray, theirs: np.ndarray, rows: int, role: str) -> np.ndarray:
    """Each row's largest |Δ| between two answers, in float64, `BLOCK_ELEMENTS` at a time:
    compared whole, the float64 copies of a 15.6 MiB FP32 answer and their difference held
    124 MiB at once, outside the shadow's byte budget."""
    left, right = ours.reshape(rows, -1), theirs.reshape(rows, -1)
    if left.shape != right.shape:
        raise ValueError(f"the candidate's {role} have shape {right.shape}, the live {left.shape}")
    step = max(1, BLOCK_ELEMENTS // max(1, left.shape[1]))
    diffs = np.empty(rows)
    for start in range(0, rows, step):
        block = left[start : start + step].astype(np.float64)
        np.subtract(block, np.asarray(right[start : start + step], dtype=np.float64), out=block)
        diffs[start : start + step] = np.abs(block, out=block).max(axis=1)
    return diffs


def conform(candidate: LoadedModel, feeds: Arrays) -> Arrays:
    """The live request's inputs in the candidate's dtypes: the same features may be read
    as float32 by one graph and float64 by the other (a forest vs a linear model)."""
    out = dict(feeds)
    for spec in candidate.manifest.inputs:
        given = out.get(spec.name)
        dtype = NUMPY_DTYPES[spec.datatype]
        if given is not None and given.dtype != dtype and dtype.kind != "O":
            out[spec.name] = given.astype(dtype)
    return out


@dataclass(eq=False)
class Shadow:
    candidate: LoadedModel
    telemetry: Telemetry
    budget_bytes: int = BUDGET_BYTES
    queue: asyncio.Queue[tuple[LoadedModel, Arrays, int, Arrays, int]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_REQUESTS)
    )
    mirrored: int = 0
    dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    held: int = 0  # bytes of the queued requests and the one the candidate runs
    failed: int = 0
    rows: int = 0  # rows compared
    agreed: int = 0  # of those, rows whose labels agree (classifiers)
    labelled: int = 0  # rows with a label on both sides
    diff_sum: float = 0.0
    diff_max: float = 0.0
    diff_counts: list[int] = field(default_factory=lambda: [0] * (len(DIFF_BUCKETS) + 1))
    last_error: str | None = None
    paused_until: float = 0.0
    task: asyncio.Task[None] | None = None
    inline_rows: int = 0  # the candidate's own setting, restored when the shadow ends

    def __post_init__(self) -> None:
        # Its batches run in the worker threads, never inline on the event loop that
        # answers live requests (ONNX Runtime releases the GIL there).
        self.inline_rows, self.candidate.batcher.inline_rows = self.candidate.batcher.inline_rows, 0

    @property
    def version(self) -> str:
        return self.candidate.version

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def restore(self) -> None:
        """Give the candidate back its inline setting (it may go live or stay a canary)."""
        self.candidate.batcher.inline_rows = self.inline_rows

    async def stop(self) -> None:
        self.restore()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def _count(self, result: str) -> None:
        self.telemetry.shadow_requests.inc((self.candidate.name, self.version, result))

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1
        self._count("dropped")
        self.telemetry.shadow_dropped.inc((self.candidate.name, self.version, reason))

    def offer(self, live: LoadedModel, feeds: Arrays, rows: int, outputs: Arrays) -> None:
        """Queue a copy of a live request, or drop it: the live path never waits."""
        if live.batcher.queued_rows > 0:
            return self._drop("busy")
        if time.monotonic() < self.paused_until:
            return self._drop("backoff")
        if self.queue.full():
            return self._drop("queue")
        size = held_bytes(feeds, outputs)
        if self.held + size > self.budget_bytes:
            return self._drop("bytes")
        self.held += size
        self.queue.put_nowait((live, feeds, rows, outputs, size))

    async def _run(self) -> None:
        while True:
            live, feeds, rows, outputs, size = await self.queue.get()
            try:
                await self._mirror(live, feeds, rows, outputs)
            finally:
                self.held -= size
                del feeds, outputs  # the budget is free: so is the memory, before the next wait

    async def _mirror(self, live: LoadedModel, feeds: Arrays, rows: int, outputs: Arrays) -> None:
        if live.batcher.queued_rows > 0:  # live traffic waits: the shadow yields to it
            self.paused_until = time.monotonic() + BACKOFF_S
            return self._drop("busy")
        try:
            shadowed = await self.candidate.batcher.submit(
                conform(self.candidate, feeds), rows, time.monotonic() + TIMEOUT_S, None
            )
            self.compare(live, outputs, shadowed, rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the candidate's failure is its own: counted, never raised
            self.failed += 1
            self.last_error = clip_message(str(exc))
            self._count("failed")
            log.debug("shadow request failed", extra={"event": "shadow_failed", "error": self.last_error})
            return
        self.mirrored += 1
        self._count("mirrored")

    def compare(self, live: LoadedModel, ours: Arrays, theirs: Arrays, rows: int) -> None:
        key = (self.candidate.name, self.version)
        lm, cm = live.manifest, self.candidate.manifest
        live_label, cand_label = lm.output("label"), cm.output("label")
        if live_label is not None and cand_label is not None:
            same = int((ours[live_label.name].reshape(rows) == theirs[cand_label.name].reshape(rows)).sum())
            self.labelled += rows
            self.agreed += same
            self.telemetry.shadow_rows.inc((*key, "agree"), same)
            self.telemetry.shadow_rows.inc((*key, "disagree"), rows - same)
        role: Literal["probabilities", "value"] = (
            "probabilities" if lm.output("probabilities") is not None else "value"
        )
        a, b = lm.output(role), cm.output(role)
        if a is None or b is None:
            return
        diffs = row_diffs(np.asarray(ours[a.name]), np.asarray(theirs[b.name]), rows, role)
        self.rows += rows
        self.diff_sum += float(diffs.sum())
        self.diff_max = max(self.diff_max, float(diffs.max()))
        for i, n in enumerate(
            np.bincount(np.searchsorted(DIFF_BUCKETS, diffs), minlength=len(DIFF_BUCKETS) + 1)
        ):
            self.diff_counts[i] += int(n)
        self.telemetry.shadow_diff.observe_many(key, diffs)

    def report(self) -> dict[str, Any]:
        """What GET /admin/models/{name} shows."""
        return {
            "version": self.version,
            "mirrored": self.mirrored,
            "dropped": self.dropped,
            "dropped_by_reason": dict(self.drop_reasons),
            "held_bytes": self.held,
            "budget_bytes": self.budget_bytes,
            "failed": self.failed,
            "queued": self.queue.qsize(),
            "last_error": self.last_error,
            "rows": self.rows,
            "label_agreement": self.agreed / self.labelled if self.labelled else None,
            "abs_diff": {
                "mean": self.diff_sum / self.rows if self.rows else None,
                "max": self.diff_max if self.rows else None,
                # cumulative counts per upper bound, as Prometheus histograms have them
                "buckets": dict(
                    zip([*map(str, DIFF_BUCKETS), "+Inf"], np.cumsum(self.diff_counts).tolist(), strict=True)
                ),
            },
        }
