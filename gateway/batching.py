"""The micro-batcher: one queue and one dispatcher per loaded model version.

Policy: when a lane is free, dispatch whatever is waiting at once (no added latency at low
load); while every lane is busy, arrivals accumulate and the next batch takes them all, up
to `max_batch_rows` rows. Rows are counted, not requests; a request larger than a batch is
split and reassembled. The queue is bounded in rows and refuses at once when full. Each
item carries its own future and a monotonic deadline; expired or cancelled items never
reach the model. If a batch fails, its items are retried one by one so that one bad
request cannot fail its batch-mates.

Only requests of one kind are joined (the same non-batch dimensions on every input, as
Triton's dynamic batcher groups them); a model without a batch dimension runs each alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np

from gateway.deadlines import on_loop
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    InferenceFailed,
    Overloaded,
    Unavailable,
    Unprocessable,
    public_reason,
)
from gateway.runtime import Runtime, check_rows
from gateway.types import Arrays

log = logging.getLogger("gateway.batching")
DispatchReason = Literal["idle", "full", "delay", "drain"]


# How far past the head of the queue a batch looks for requests of its kind: bounds the
# cost of one take when many kinds wait at once.
SCAN_LIMIT = 1024
Kind = tuple[tuple[int, ...], ...]


@dataclass(slots=True, eq=False)
class _Item:
    feeds: Arrays
    rows: int
    deadline: float
    enqueued: float
    future: asyncio.Future[Arrays]
    context: object = None  # the caller's span context, for batch span links
    # The non-batch dimensions of every input: only equal kinds are joined. Known once a
    # request has company in the queue (a lone request never pays for it).
    kind: Kind | None = None


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one dispatched batch did, for metrics and traces. Times are time.monotonic()."""

    rows: int
    requests: int
    enqueued: list[float]
    started: float
    finished: float
    reason: DispatchReason
    failed: bool
    contexts: list[object] = field(default_factory=list)  # callers' span contexts, by request
    feeds: Arrays | None = None
    outputs: Arrays | None = None
    # Measured phases, for Triton's batch statistics: joining the inputs, the runtime
    # call (with its thread hand-off), slicing the outputs back to their requests.
    input_seconds: float = 0.0
    infer_seconds: float = 0.0
    output_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class MicroBatcher:
    def __init__(
        self, runtime: Runtime, *, max_batch_rows: int = 256, max_delay: float = 0.0, lanes: int = 1,
        max_queue_rows: int = 8192, on_batch: Callable[[BatchReport], None] | None = None,
        name: str = "model", inline_rows: int = 0, batched: bool = True, ragged: bool = True,
    ) -> None:  # fmt: skip
        """`batched`: the model's inputs and outputs share a first (batch) dimension;
        without one, each request runs alone and its outputs are its own. `ragged`: some
        non-batch dimension is variable, so requests are grouped by kind; where every one is
        fixed (and checked before queueing) all requests are of one kind, and pay nothing."""
        if max_batch_rows < 1 or lanes < 1 or max_queue_rows < 1 or max_delay < 0:
            raise ValueError("batch rows, lanes and queue rows must be >= 1, delay >= 0")
        self.runtime = runtime
        self.batched = batched
        self._grouped = batched and ragged
        # A request to a model without a batch dimension counts as one row: one per batch.
        self.max_batch_rows = max_batch_rows if batched else 1
        self.max_delay = max_delay
        self.max_queue_rows = max_queue_rows
        self.on_batch = on_batch
        # Batches of at most this many rows run on the event loop itself: for a model that
        # answers in microseconds, a thread hand-off costs more than the inference.
        self.inline_rows = inline_rows
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._lanes = asyncio.Semaphore(lanes)
        self._executor = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix=f"infer-{name}")
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def submit(self, feeds: Arrays, rows: int, deadline: float, context: object = None) -> Arrays:
        """Queue `rows` rows (arrays sharing a first axis) and wait for their outputs."""
        if self._closing or self._dispatcher is None:
            raise Unavailable("the server is shutting down")
        if self._queued_rows + rows > self.max_queue_rows:
            raise Overloaded(
                f"queue full ({self._queued_rows} rows waiting, limit {self.max_queue_rows}); "
                "retry after the Retry-After interval"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        step = self.max_batch_rows
        items = (
            [_Item(feeds, rows, deadline, now, loop.create_future(), context)]
            if rows <= step or not self.batched
            else [
                _Item({k: v[start : start + step] for k, v in feeds.items()}, min(step, rows - start),
                      deadline, now, loop.create_future(), context)
                for start in range(0, rows, step)
            ]
        )  # fmt: skip
        self._queue.extend(items)
        self._queued_rows += rows
        self._wakeup.set()
        # No timer of its own: the loop's shared one (gateway.deadlines) stands at the
        # earliest deadline, so a request that is answered in time arms nothing.
        deadlines = on_loop(loop)
        key = items[0].future
        deadlines.add(key, _loop_deadline(loop, deadline), partial(_expire, items))
        try:
            if len(items) == 1:
                return await items[0].future
            results = [await item.future for item in items]
        finally:
            deadlines.discard(key)
            for item in items:
                item.future.cancel()  # no-op once done; tells the dispatcher to skip it
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    async def _dispatch_loop(self) -> None:
        while True:
            await self._lanes.acquire()
            while not self._queue:
                if self._closing:
                    self._lanes.release()
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            reason = await self._fill()
            batch = self._take()
            if not batch:
                self._lanes.release()
                continue
            if self.inline_rows and sum(i.rows for i in batch) <= self.inline_rows:
                await self._run(batch, reason, inline=True)
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch, reason))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _fill(self) -> DispatchReason:
        """Wait up to max_delay after the oldest arrival for a fuller batch."""
        if self._closing:
            return "drain"
        if self._queued_rows >= self.max_batch_rows:
            return "full"
        if self.max_delay <= 0:
            return "idle"
        until = self._queue[0].enqueued + self.max_delay
        while self._queued_rows < self.max_batch_rows and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return "delay"
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
        return "full" if self._queued_rows >= self.max_batch_rows else "drain"

    def _take(self) -> list[_Item]:
        """The oldest live request and those of its kind behind it, up to max_batch_rows;
        requests of other kinds keep their places for the next batch."""
        batch: list[_Item] = []
        passed: list[_Item] = []
        rows = 0
        now = time.monotonic()
        queue = self._queue
        kind: Kind | None = None
        while queue and len(passed) < SCAN_LIMIT:
            item = queue[0]
            if batch and self._grouped:
                kind = kind or _kind(batch[0])
                if (item.kind or _kind(item)) != kind and not item.future.done():
                    passed.append(queue.popleft())
                    continue
            if rows + item.rows > self.max_batch_rows:
                break
            queue.popleft()
            self._queued_rows -= item.rows
            if item.future.done():
                continue  # cancelled by its caller (deadline, disconnect)
            if item.deadline <= now:
                item.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it was queued")
                )
                continue
            batch.append(item)
            rows += item.rows
        queue.extendleft(reversed(passed))
        return batch

    async def _run(self, batch: list[_Item], reason: DispatchReason, inline: bool = False) -> None:
        """Run one batch; inline, it never suspends, so the dispatcher runs it in place."""
        started = joined = ran = time.monotonic()
        failed = False
        feeds = outputs = None
        try:
            try:
                feeds = _concat([item.feeds for item in batch])
                joined = time.monotonic()
                outputs = await self._infer(feeds, inline)
                ran = time.monotonic()
            except Exception as exc:
                failed = True
                if len(batch) == 1:
                    _fail(batch[0], exc)
                else:
                    await self._isolate(batch, inline)
                ran = time.monotonic()
            else:
                _deliver(batch, outputs)
        finally:
            self._lanes.release()
            self._wakeup.set()
        self._report(batch, reason, (started, joined, ran), feeds, outputs, failed)

    def _report(
        self, batch: list[_Item], reason: DispatchReason, times: tuple[float, float, float],
        feeds: Arrays | None, outputs: Arrays | None, failed: bool,
    ) -> None:  # fmt: skip
        if self.on_batch is None:
            return
        started, joined, ran = times
        finished = time.monotonic()
        try:
            self.on_batch(BatchReport(
                rows=sum(i.rows for i in batch), requests=len(batch), enqueued=[i.enqueued for i in batch],
                started=started, finished=finished, reason=reason, failed=failed,
                contexts=[i.context for i in batch], feeds=feeds, outputs=outputs,
                input_seconds=joined - started, infer_seconds=ran - joined, output_seconds=finished - ran,
            ))  # fmt: skip
        except Exception:  # an observer's bug must never stop the dispatcher
            log.exception("batch observer failed", extra={"event": "observer_error"})

    def _infer_now(self, feeds: Arrays) -> Arrays:
        outputs = self.runtime.run(feeds)
        if self.batched:
            check_rows(feeds, outputs)
        return outputs

    async def _infer(self, feeds: Arrays, inline: bool) -> Arrays:
        if inline:
            return self._infer_now(feeds)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._infer_now, feeds)

    async def _isolate(self, batch: list[_Item], inline: bool) -> None:
        """Run a failed batch's items one by one: only the guilty ones fail."""
        for item in batch:
            if item.future.done():
                continue
            try:
                result = await self._infer(item.feeds, inline)
            except Exception as exc:
                _fail(item, exc)
            else:
                _resolve(item, result)

    async def close(self) -> None:
        """Stop taking requests, answer every queued and running one, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._dispatcher is not None:
            await self._dispatcher
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)


def _kind(item: _Item) -> Kind:
    if item.kind is None:
        item.kind = tuple([v.shape[1:] for v in item.feeds.values()])
    return item.kind


def _resolve(item: _Item, outputs: Arrays) -> None:
    if not item.future.done():
        item.future.set_result(outputs)


def _deliver(batch: list[_Item], outputs: Arrays) -> None:
    """Slice each item's rows back out of the batch outputs (views, no copies)."""
    if len(batch) == 1:  # its own outputs, whole: a model without a batch dimension has no rows
        _resolve(batch[0], outputs)
        return
    offset = 0
    for item in batch:
        _resolve(item, {k: v[offset : offset + item.rows] for k, v in outputs.items()})
        offset += item.rows


def _expire(items: list[_Item]) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(
                DeadlineExceeded("the request's deadline passed before it was answered")
            )


def _concat(parts: list[Arrays]) -> Arrays:
    """One contiguous array per input; a lone request's arrays are used as they are."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _fail(item: _Item, exc: Exception) -> None:
    if item.future.done():
        return
    error: Exception = exc
    if not isinstance(exc, GatewayError):
        reason = public_reason(exc, 300, "no message")
        # ONNX Runtime's INVALID_ARGUMENT: inputs each valid for the signature that the graph
        # still cannot combine (two inputs that do not broadcast): the request, not the server.
        # So is a zero-element tensor the graph's operators refuse (Triton passes those on).
        if type(exc).__name__ == "InvalidArgument" or any(v.size == 0 for v in item.feeds.values()):
            error = Unprocessable(
                "the model cannot run on these inputs", [{"loc": ["body", "inputs"], "msg": reason}]
            )
        else:
            error = InferenceFailed(f"inference failed: {type(exc).__name__}: {reason}")
    item.future.set_exception(error)


def _loop_deadline(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """A time.monotonic() deadline on the loop's own clock (they may differ)."""
    return loop.time() + (deadline - time.monotonic())
