"""The batcher against a fake runtime, no HTTP: sizes, splitting, deadlines, isolation,
cancellation, shedding and shutdown drain.

Covers `gateway/testing.py`."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.batching import BatchReport, MicroBatcher
from gateway.errors import DeadlineExceeded, InferenceFailed, Overloaded, Unavailable, Unprocessable
from gateway.testing import FakeRuntime


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32).reshape(-1, 1)}


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


@pytest.mark.asyncio
async def test_idle_request_dispatches_at_once():
    runtime = FakeRuntime()
    batcher = MicroBatcher(runtime, max_batch_rows=8)
    batcher.start()
    started = time.monotonic()
    out = await batcher.submit(rows(1, 2), 2, later())
    assert time.monotonic() - started < 0.05
    np.testing.assert_array_equal(out["y"].ravel(), [2, 4])
    await batcher.close()


@pytest.mark.asyncio
async def test_waiting_requests_share_one_batch_up_to_max_rows():
    runtime = FakeRuntime()
    runtime.gate.clear()  # hold the first batch so the rest accumulate
    reports: list[BatchReport] = []
    batcher = MicroBatcher(runtime, max_batch_rows=4, on_batch=reports.append)
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit(rows(0), 1, later()))]
    await asyncio.sleep(0.02)  # the first is dispatched alone: the batcher was idle
    tasks += [asyncio.create_task(batcher.submit(rows(i), 1, later())) for i in range(1, 9)]
    await asyncio.sleep(0.02)
    runtime.gate.set()
    results = await asyncio.gather(*tasks)
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(9)]
    assert runtime.batches == [1, 4, 4]
    assert max(runtime.batches) <= 4
    assert [r.reason for r in reports] == ["idle", "full", "full"]
    await batcher.close()


@pytest.mark.asyncio
async def test_large_request_is_split_and_reassembled_in_order():
    runtime = FakeRuntime()
    batcher = MicroBatcher(runtime, max_batch_rows=3)
    batcher.start()
    values = list(range(10))
    out = await batcher.submit(rows(*values), 10, later())
    np.testing.assert_array_equal(out["y"].ravel(), np.array(values) * 2)
    assert sorted(runtime.batches) == [1, 3, 3, 3]
    await batcher.close()


@pytest.mark.asyncio
async def test_max_delay_waits_for_a_fuller_batch():
    runtime = FakeRuntime()
    batcher = MicroBatcher(runtime, max_batch_rows=64, max_delay=0.05)
    batcher.start()
    started = time.monotonic()
    first = asyncio.create_task(batcher.submit(rows(1), 1, later()))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(batcher.submit(rows(2), 1, later()))
    await asyncio.gather(first, second)
    elapsed = time.monotonic() - started
    assert runtime.batches == [2]
    assert 0.04 <= elapsed < 0.5
    await batcher.close()


@pytest.mark.asyncio
async def test_full_batch_does_not_wait_for_max_delay():
    runtime = FakeRuntime()
    batcher = MicroBatcher(runtime, max_batch_rows=4, max_delay=5.0)
    batcher.start()
    started = time.monotonic()
    await batcher.submit(rows(1, 2, 3, 4), 4, later())
    assert time.monotonic() - started < 1.0
    await batcher.close()


@pytest.mark.asyncio
async def test_expired_request_never_reaches_the_model():
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = MicroBatcher(runtime, max_batch_rows=4)
    batcher.start()
    blocker = asyncio.create_task(batcher.submit(rows(1), 1, later()))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(99), 1, time.monotonic() + 0.05)
    assert time.monotonic() - started < 0.5  # answered at its deadline, not after the batch
    runtime.gate.set()
    await blocker
    await batcher.submit(rows(3), 1, later())
    assert runtime.batches == [1, 1]  # the expired row was never run
    await batcher.close()


@pytest.mark.asyncio
async def test_already_expired_deadline_is_refused():
    batcher = MicroBatcher(FakeRuntime(), max_batch_rows=4)
    batcher.start()
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(1), 1, time.monotonic() - 1)
    await batcher.close()


@pytest.mark.asyncio
async def test_one_bad_request_does_not_fail_its_batch_mates():
    runtime = FakeRuntime(poison=-1.0)
    runtime.gate.clear()
    batcher = MicroBatcher(runtime, max_batch_rows=16)
    batcher.start()
    first = asyncio.create_task(batcher.submit(rows(0), 1, later()))
    await asyncio.sleep(0.02)
    good = [asyncio.create_task(batcher.submit(rows(i, i), 2, later())) for i in (1, 2, 3)]
    bad = asyncio.create_task(batcher.submit(rows(-1.0), 1, later()))
    await asyncio.sleep(0.02)
    runtime.gate.set()
    await first
    for i, task in zip((1, 2, 3), good, strict=True):
        np.testing.assert_array_equal((await task)["y"].ravel(), [2 * i, 2 * i])
    with pytest.raises(InferenceFailed, match="poisoned"):
        await bad
    assert 7 in runtime.batches  # they did share a batch before isolation
    await batcher.close()


@pytest.mark.asyncio
async def test_cancelled_request_is_skipped():
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = MicroBatcher(runtime, max_batch_rows=4)
    batcher.start()
    blocker = asyncio.create_task(batcher.submit(rows(1), 1, later()))
    await asyncio.sleep(0.02)
    doomed = asyncio.create_task(batcher.submit(rows(5, 5, 5), 3, later()))
    await asyncio.sleep(0.01)
    doomed.cancel()
    kept = asyncio.create_task(batcher.submit(rows(7), 1, later()))
    await asyncio.sleep(0.01)
    runtime.gate.set()
    await blocker
    np.testing.assert_array_equal((await kept)["y"].ravel(), [14])
    assert runtime.batches == [1, 1]
    assert batcher.queued_rows == 0
    await batcher.close()


@pytest.mark.asyncio
async def test_full_queue_sheds_at_once():
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = MicroBatcher(runtime, max_batch_rows=2, max_queue_rows=4)
    batcher.start()
    first = asyncio.create_task(batcher.submit(rows(1), 1, later()))
    await asyncio.sleep(0.02)  # running, out of the queue
    queued = [asyncio.create_task(batcher.submit(rows(i, i), 2, later())) for i in (2, 3)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(Overloaded) as err:
        await batcher.submit(rows(9), 1, later())
    assert time.monotonic() - started < 0.01
    assert err.value.status == 503 and "retry-after" in err.value.headers
    runtime.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.submit(rows(9), 1, later())  # capacity is back
    await batcher.close()


@pytest.mark.asyncio
async def test_lanes_run_batches_concurrently():
    runtime = FakeRuntime(delay=0.05)
    batcher = MicroBatcher(runtime, max_batch_rows=1, lanes=3)
    batcher.start()
    await asyncio.gather(*(batcher.submit(rows(i), 1, later()) for i in range(6)))
    assert runtime.max_concurrent == 3
    await batcher.close()


@pytest.mark.asyncio
async def test_close_drains_queued_and_running_then_refuses():
    runtime = FakeRuntime(delay=0.02)
    batcher = MicroBatcher(runtime, max_batch_rows=2)
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit(rows(i), 1, later())) for i in range(7)]
    await asyncio.sleep(0)
    await batcher.close()
    assert all(t.done() for t in tasks)
    assert [float(t.result()["y"][0, 0]) for t in tasks] == [2.0 * i for i in range(7)]
    with pytest.raises(Unavailable):
        await batcher.submit(rows(1), 1, later())


@pytest.mark.asyncio
async def test_wrong_output_rows_fail_cleanly():
    class Broken(FakeRuntime):
        def run(self, feeds):
            return {"y": np.zeros((1, 1))}

    batcher = MicroBatcher(Broken(), max_batch_rows=8)
    batcher.start()
    with pytest.raises(InferenceFailed, match="rows"):
        await batcher.submit(rows(1, 2, 3), 3, later())
    await batcher.close()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    max_rows=st.integers(1, 8),
    lanes=st.integers(1, 3),
    delays=st.lists(st.floats(0, 0.003), min_size=12, max_size=12),
)
def test_any_interleaving_matches_one_by_one(sizes, max_rows, lanes, delays):
    """MLServer #1306/#514: batching must never mix up or drop responses."""

    async def scenario() -> None:
        batcher = MicroBatcher(FakeRuntime(), max_batch_rows=max_rows, lanes=lanes)
        batcher.start()
        counter = iter(range(10_000))

        async def client(n: int, pause: float) -> tuple[np.ndarray, np.ndarray]:
            await asyncio.sleep(pause)
            x = np.array([next(counter) for _ in range(n)], dtype=np.float32).reshape(-1, 1)
            return x, (await batcher.submit({"x": x}, n, later()))["y"]

        results = await asyncio.gather(*(client(n, d) for n, d in zip(sizes, delays, strict=False)))
        for x, y in results:
            np.testing.assert_array_equal(y, x * 2)
        await batcher.close()

    asyncio.run(scenario())


@pytest.mark.asyncio
async def test_inline_batches_skip_the_thread_and_still_batch():
    runtime = FakeRuntime()
    reports: list[BatchReport] = []
    batcher = MicroBatcher(runtime, max_batch_rows=8, inline_rows=4, on_batch=reports.append)
    batcher.start()
    small = [asyncio.create_task(batcher.submit(rows(i), 1, later())) for i in range(3)]
    big = asyncio.create_task(batcher.submit(rows(5, 6, 7, 8, 9, 10), 6, later()))
    results = await asyncio.gather(*small)
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0]
    np.testing.assert_array_equal((await big)["y"].ravel(), [10, 12, 14, 16, 18, 20])
    assert runtime.max_concurrent == 1
    assert [r.rows for r in reports] == [3, 6]  # three singles shared an inline batch
    await batcher.close()


@pytest.mark.asyncio
async def test_inline_failure_is_isolated_too():
    runtime = FakeRuntime(poison=-1.0)
    batcher = MicroBatcher(runtime, max_batch_rows=8, inline_rows=8)
    batcher.start()
    good = [asyncio.create_task(batcher.submit(rows(i), 1, later())) for i in (1, 2)]
    bad = asyncio.create_task(batcher.submit(rows(-1.0), 1, later()))
    assert [float((await t)["y"][0, 0]) for t in good] == [2.0, 4.0]
    with pytest.raises(InferenceFailed, match="poisoned"):
        await bad
    assert runtime.batches[0] == 3  # they shared a batch, then were run one by one
    await batcher.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("inline_rows", [0, 8])
async def test_a_failing_observer_never_stops_the_dispatcher(inline_rows):
    def broken(report: BatchReport) -> None:
        raise ZeroDivisionError("observer bug")

    batcher = MicroBatcher(FakeRuntime(), max_batch_rows=8, inline_rows=inline_rows, on_batch=broken)
    batcher.start()
    for i in range(3):
        np.testing.assert_array_equal((await batcher.submit(rows(i), 1, later()))["y"].ravel(), [2 * i])
    await batcher.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("inline_rows", [0, 8])
async def test_requests_that_cannot_be_joined_are_run_alone(inline_rows):
    """Variable non-batch dimensions: np.concatenate fails, each request still answers."""
    runtime = FakeRuntime()
    batcher = MicroBatcher(runtime, max_batch_rows=8, inline_rows=inline_rows)
    batcher.start()
    wide = {"x": np.ones((1, 3), np.float32)}
    narrow = {"x": np.ones((1, 2), np.float32)}
    # queued in the same loop turn: the dispatcher takes them as one batch
    a = asyncio.create_task(batcher.submit(wide, 1, later()))
    b = asyncio.create_task(batcher.submit(narrow, 1, later()))
    assert (await a)["y"].shape == (1, 3) and (await b)["y"].shape == (1, 2)
    assert runtime.batches == [1, 1]
    await batcher.close()


def tensor(shape: tuple[int, ...], start: float = 0.0) -> dict[str, np.ndarray]:
    size = int(np.prod(shape))
    return {"x": (np.arange(size, dtype=np.float32) + start).reshape(shape)}


@pytest.mark.asyncio
async def test_mixed_shapes_in_flight_form_one_batch_per_kind():
    """Sequence lengths 3, 5 and 7 interleaved: each length is batched with its own kind,
    never joined with another and never reduced to one by one."""
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = MicroBatcher(runtime, max_batch_rows=64)
    batcher.start()
    first = asyncio.create_task(batcher.submit(tensor((1, 2)), 1, later()))
    await asyncio.sleep(0.02)  # dispatched alone while the batcher was idle; held by the gate
    lengths = [3, 5, 7] * 6
    feeds = [tensor((2, n, 4), start=i) for i, n in enumerate(lengths)]
    tasks = [asyncio.create_task(batcher.submit(f, 2, later())) for f in feeds]
    await asyncio.sleep(0.02)
    runtime.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    for f, r in zip(feeds, results, strict=True):
        np.testing.assert_array_equal(r["y"], f["x"] * 2)
    assert runtime.shapes[0] == (1, 2)
    assert sorted(runtime.shapes[1:]) == [(12, 3, 4), (12, 5, 4), (12, 7, 4)]
    assert runtime.shapes[1] == (12, 3, 4)  # the oldest kind goes first
    await batcher.close()


@pytest.mark.asyncio
async def test_kinds_keep_their_order_and_row_limit():
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = MicroBatcher(runtime, max_batch_rows=4)
    batcher.start()
    first = asyncio.create_task(batcher.submit(tensor((1, 1)), 1, later()))
    await asyncio.sleep(0.02)
    shapes = [(1, 2), (1, 3), (1, 2), (1, 3)] * 3 + [(3, 2)]
    feeds = [tensor(s, start=i) for i, s in enumerate(shapes)]
    tasks = [asyncio.create_task(batcher.submit(f, f["x"].shape[0], later())) for f in feeds]
    await asyncio.sleep(0.02)
    runtime.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    for f, r in zip(feeds, results, strict=True):
        np.testing.assert_array_equal(r["y"], f["x"] * 2)
    assert runtime.shapes[1:] == [(4, 2), (4, 3), (2, 2), (2, 3), (3, 2)]
    await batcher.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([1, 2, 5])), min_size=1, max_size=24))
def test_any_mix_of_shapes_answers_as_one_by_one(requests: list[tuple[int, int]]):
    """Whatever mix of rows (zero included) and widths is in flight, each answer is what
    the request alone would get, and no batch joins two widths."""

    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.gate.clear()
        batcher = MicroBatcher(runtime, max_batch_rows=4)
        batcher.start()
        feeds = [tensor((n, w), start=i) for i, (n, w) in enumerate(requests)]
        tasks = [
            asyncio.create_task(batcher.submit(f, n, later()))
            for f, (n, _) in zip(feeds, requests, strict=True)
        ]
        await asyncio.sleep(0.01)
        runtime.gate.set()
        results = await asyncio.gather(*tasks)
        for f, r in zip(feeds, results, strict=True):
            assert r["y"].shape == f["x"].shape
            np.testing.assert_array_equal(r["y"], f["x"] * 2)
        assert len(runtime.shapes) <= len(requests)
        assert all(shape[0] <= 4 for shape in runtime.shapes)
        await batcher.close()

    asyncio.run(scenario())


@pytest.mark.asyncio
async def test_zero_row_request_answers_an_empty_output_of_its_shape():
    runtime = FakeRuntime()
    batcher = MicroBatcher(runtime, max_batch_rows=8)
    batcher.start()
    alone = await batcher.submit(tensor((0, 16)), 0, later())
    assert alone["y"].shape == (0, 16)
    runtime.gate.clear()
    held = asyncio.create_task(batcher.submit(tensor((1, 16)), 1, later()))
    await asyncio.sleep(0.02)
    joined = [asyncio.create_task(batcher.submit(tensor((n, 16)), n, later())) for n in (2, 0, 1)]
    await asyncio.sleep(0.02)
    runtime.gate.set()
    results = await asyncio.gather(held, *joined)
    assert [r["y"].shape for r in results] == [(1, 16), (2, 16), (0, 16), (1, 16)]
    assert runtime.shapes[-1] == (3, 16)  # the empty one rode along
    await batcher.close()


@pytest.mark.asyncio
async def test_model_without_batch_dimension_runs_each_request_alone():
    """Inputs of shape [16] (Triton's max_batch_size 0): never concatenated, never split,
    outputs returned whole, however many wait at once."""
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = MicroBatcher(runtime, max_batch_rows=8, batched=False)
    batcher.start()
    feeds = [tensor((16,), start=i) for i in range(6)] + [{"x": np.float32(3.0) * np.ones(())}]
    tasks = [asyncio.create_task(batcher.submit(f, 1, later())) for f in feeds]
    await asyncio.sleep(0.02)
    runtime.gate.set()
    results = await asyncio.gather(*tasks)
    for f, r in zip(feeds, results, strict=True):
        assert r["y"].shape == f["x"].shape
        np.testing.assert_array_equal(r["y"], f["x"] * 2)
    assert runtime.shapes == [(16,)] * 6 + [()]
    await batcher.close()


@pytest.mark.asyncio
async def test_zero_element_request_the_model_refuses_is_the_requests_fault():
    class RefusesEmpty(FakeRuntime):
        def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if feeds["x"].size == 0:
                raise RuntimeError("Invalid input shape: {0,16}")
            return super().run(feeds)

    batcher = MicroBatcher(RefusesEmpty(), max_batch_rows=8)
    batcher.start()
    with pytest.raises(Unprocessable) as caught:
        await batcher.submit(tensor((0, 16)), 0, later())
    assert caught.value.status == 422
    assert "Invalid input shape" in str(caught.value.detail)
    await batcher.close()


@pytest.mark.asyncio
async def test_requests_answered_in_time_arm_no_timer_of_their_own(monkeypatch):
    """Their deadlines stand on the loop's one shared timer (gateway.deadlines): the first
    arms it, later ones are later and arm nothing; a deadline still fires on time."""
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at
    monkeypatch.setattr(
        loop, "call_at", lambda when, *args, **kw: armed.append(when) or call_at(when, *args, **kw)
    )
    batcher = MicroBatcher(FakeRuntime(), max_batch_rows=8, inline_rows=8)
    batcher.start()
    for i in range(50):
        out = await batcher.submit(rows(float(i)), 1, later(5.0 + i / 1000))
        assert out["y"].ravel().tolist() == [2.0 * i]
    assert len(armed) == 1
    slow = FakeRuntime(delay=0.5)
    late = MicroBatcher(slow, max_batch_rows=8)
    late.start()
    with pytest.raises(DeadlineExceeded):
        await late.submit(rows(1), 1, later(0.05))
    await batcher.close()
    await late.close()
