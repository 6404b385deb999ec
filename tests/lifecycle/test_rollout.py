"""Roll-out (`gateway/lifecycle/rollout.py`) on the serving table (`gateway/lifecycle/table.py`):
a candidate is loaded before anything changes, a failure changes nothing, and a version
no longer needed drains before it is unloaded."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import pytest_asyncio

from gateway.errors import NotFound
from gateway.lifecycle.loading import Loader
from gateway.lifecycle.rollout import Rollout
from gateway.lifecycle.table import ServingTable
from gateway.runtime import ModelLoadError
from tests.lifecycle.conftest import settings_for, until


@pytest.fixture
def table() -> ServingTable:
    return ServingTable()


@pytest_asyncio.fixture
async def rollout(table, repo, repository, runtimes, telemetry):
    rollout = Rollout(table, Loader(settings_for(repo), repository, runtimes, telemetry), telemetry)
    yield rollout
    await rollout.close()


@pytest_asyncio.fixture
async def threaded(table, repo, repository, runtimes, telemetry):
    """Every batch in a worker thread (no inline budget), so a runtime can be held busy."""
    settings = settings_for(repo, inline_budget_us=0)
    rollout = Rollout(table, Loader(settings, repository, runtimes, telemetry), telemetry)
    yield rollout
    await rollout.close()


@pytest.mark.asyncio
async def test_a_switch_makes_the_version_live_and_retires_the_previous(table, rollout, telemetry):
    assert await rollout.switch("ident", "1") == ("1", None)
    assert await rollout.switch("ident", "2") == ("2", "1")
    assert table.live == {"ident": "2"}
    await until(lambda: ("ident", "1") not in table.models)
    assert telemetry.switches.value(("ident", "2", "ok")) == 1


@pytest.mark.asyncio
async def test_a_version_that_fails_to_load_changes_nothing_and_is_not_persisted(table, rollout, runtimes, telemetry):
    await rollout.switch("ident", "1")
    runtimes.broken.add(("ident", "2"))
    persisted = []
    with pytest.raises(ModelLoadError, match="refused ident:2"):
        await rollout.switch("ident", "2", persist=lambda: persisted.append(1))
    assert table.live == {"ident": "1"} and persisted == []
    assert table.failures["ident"].startswith("2: ") and set(table.models) == {("ident", "1")}
    assert telemetry.switches.value(("ident", "2", "failed")) == 1
    await rollout.switch("ident", "3")
    assert "ident" not in table.failures  # a switch that works clears the reason


@pytest.mark.asyncio
async def test_requests_queued_on_the_old_version_are_answered_before_it_is_unloaded(table, threaded, runtimes):
    rollout = threaded
    old = await rollout.switch("ident", "1") and table.models[("ident", "1")]
    busy = runtimes.made[("ident", "1")]
    busy.gate.clear()  # the old version is busy
    feeds = {"x": np.full((2, 4), 3.0, np.float32)}
    queued = [
        asyncio.create_task(old.batcher.submit(feeds, 2, time.monotonic() + 5, None)) for _ in range(3)
    ]
    try:
        await asyncio.sleep(0.01)
        await rollout.switch("ident", "2")
        assert table.live == {"ident": "2"} and not any(t.done() for t in queued)
    finally:
        busy.gate.set()
    answers = await asyncio.gather(*queued)
    assert all(a["y"].tolist() == [[6.0] * 4] * 2 for a in answers)
    await until(lambda: ("ident", "1") not in table.models)
    assert not old.ready


@pytest.mark.asyncio
async def test_a_canary_serves_beside_the_live_version_until_ended(table, rollout, telemetry):
    await rollout.switch("ident", "1")
    await rollout.set_canary("ident", "2", 25.0)
    assert table.canaries["ident"].version == "2" and table.canaries["ident"].weight == 25.0
    assert telemetry.canary_weight.value(("ident", "2")) == 25.0
    await rollout.set_canary("ident", None, 0.0)
    assert "ident" not in table.canaries
    await until(lambda: ("ident", "2") not in table.models)  # the candidate is retired


@pytest.mark.asyncio
async def test_promoting_the_canary_ends_the_experiment_and_keeps_the_version(table, rollout):
    await rollout.switch("ident", "1")
    await rollout.set_canary("ident", "2", 50.0)
    await rollout.switch("ident", "2")
    assert table.live == {"ident": "2"} and "ident" not in table.canaries
    await until(lambda: ("ident", "1") not in table.models)
    assert ("ident", "2") in table.models


@pytest.mark.asyncio
async def test_a_canary_or_shadow_needs_a_live_version(rollout):
    with pytest.raises(NotFound, match="no live version"):
        await rollout.set_canary("ident", "2", 10.0)
    with pytest.raises(NotFound, match="no live version"):
        await rollout.set_shadow("ident", "2")


@pytest.mark.asyncio
async def test_a_shadow_runs_off_the_event_loop_and_gets_its_setting_back(table, rollout):
    await rollout.switch("ident", "1")
    await rollout.set_shadow("ident", "2")
    candidate = table.models[("ident", "2")]
    assert table.shadows["ident"].version == "2" and candidate.batcher.inline_rows == 0
    await rollout.switch("ident", "2")  # the shadow goes live: its batches may run inline again
    assert "ident" not in table.shadows and candidate.batcher.inline_rows == 4


@pytest.mark.asyncio
async def test_a_pinned_version_stays_loaded_when_it_stops_being_live(table, rollout):
    await rollout.switch("ident", "1")
    await rollout.load_pinned("ident", "1")
    await rollout.switch("ident", "2")
    await asyncio.sleep(0.05)
    assert ("ident", "1") in table.models and table.models[("ident", "1")].ready
    await rollout.unload("ident", "1")
    assert ("ident", "1") not in table.models and ("ident", "1") not in table.pinned


@pytest.mark.asyncio
async def test_unloading_the_live_version_leaves_the_model_without_one(table, rollout, telemetry):
    model = await rollout.switch("ident", "1") and table.models[("ident", "1")]
    await rollout.unload("ident", "1")
    assert table.live == {} and table.models == {} and not model.ready
    assert not [line for line in telemetry.registry.render().splitlines() if line.startswith("gateway_model_info{")]
