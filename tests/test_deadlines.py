"""Deadlines on one shared loop timer: each fires at its own time, a discarded one never
does, and a later deadline arms no timer of its own."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.deadlines import Deadlines, on_loop


def _fired_at(loop: asyncio.AbstractEventLoop, fired: dict[str, float], name: str):
    return lambda: fired.__setitem__(name, loop.time())


@pytest.mark.asyncio
async def test_each_deadline_fires_at_its_own_time_in_any_order_of_adding():
    loop = asyncio.get_running_loop()
    deadlines, fired, start = Deadlines(loop), {}, loop.time()
    for name, delay in (("late", 0.12), ("early", 0.04), ("middle", 0.08)):
        deadlines.add(name, start + delay, _fired_at(loop, fired, name))
    await asyncio.sleep(0.2)
    assert list(fired) == ["early", "middle", "late"]
    for name, delay in (("early", 0.04), ("middle", 0.08), ("late", 0.12)):
        assert delay - 0.002 <= fired[name] - start < delay + 0.03, (name, fired[name] - start)
    assert len(deadlines) == 0


@pytest.mark.asyncio
async def test_a_discarded_deadline_never_fires_and_the_rest_still_do():
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), {}
    deadlines.add("kept", loop.time() + 0.05, _fired_at(loop, fired, "kept"))
    deadlines.add("done", loop.time() + 0.02, _fired_at(loop, fired, "done"))
    deadlines.discard("done")
    deadlines.discard("never added")
    await asyncio.sleep(0.1)
    assert list(fired) == ["kept"]


@pytest.mark.asyncio
async def test_later_deadlines_arm_no_timer_of_their_own(monkeypatch):
    loop = asyncio.get_running_loop()
    deadlines, armed = Deadlines(loop), []
    call_at = loop.call_at
    monkeypatch.setattr(loop, "call_at", lambda when, *args: armed.append(when) or call_at(when, *args))
    now = loop.time()
    for n in range(100):  # the common case: the same timeout for every request, each a bit later
        deadlines.add(n, now + 30 + n / 1000, lambda: None)
    deadlines.add("sooner", now + 10, lambda: None)  # an earlier one stands the timer earlier
    assert armed == [now + 30, now + 10]
    for key in [*range(100), "sooner"]:
        deadlines.discard(key)


@pytest.mark.asyncio
async def test_a_failing_callback_strands_no_other_deadline():
    loop = asyncio.get_running_loop()
    deadlines, fired, errors = Deadlines(loop), {}, []
    loop.set_exception_handler(lambda _, context: errors.append(context["exception"]))
    try:
        deadlines.add("bad", loop.time() + 0.02, lambda: 1 / 0)
        deadlines.add("good", loop.time() + 0.02, _fired_at(loop, fired, "good"))
        deadlines.add("later", loop.time() + 0.06, _fired_at(loop, fired, "later"))
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(None)
    assert set(fired) == {"good", "later"}
    assert [type(e) for e in errors] == [ZeroDivisionError]


def test_each_loop_has_its_own_deadlines():
    async def mine() -> Deadlines:
        return on_loop(asyncio.get_running_loop())

    here = asyncio.run(mine())
    there: list[Deadlines] = []
    thread = threading.Thread(target=lambda: there.append(asyncio.run(mine())))
    thread.start()
    thread.join()
    assert here is not there[0]
