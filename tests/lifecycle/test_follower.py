"""The serving.json follower (`gateway/lifecycle/follower.py`): startup loads what the
repository names, a poll applies what changed, a refused version is retried only when
serving.json names another, and no error stops it."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from gateway.artifacts.repository import Repository
from gateway.lifecycle.registry import ModelRegistry
from tests.lifecycle.conftest import settings_for, until
from tests.security.models import publish_identity


@pytest_asyncio.fixture
async def registry(repo, repository, runtimes, telemetry):
    registry = ModelRegistry(settings_for(repo), repository, runtimes, telemetry)
    yield registry
    await registry.close()


@pytest.mark.asyncio
async def test_without_serving_json_the_newest_version_that_loads_goes_live(registry, runtimes):
    runtimes.broken.add(("ident", "3"))
    await registry.load_repository()
    assert registry.live == {"ident": "2"} and registry.all_ready()
    assert runtimes.calls == [("ident", "3"), ("ident", "2")]


@pytest.mark.asyncio
async def test_startup_applies_the_live_version_canary_and_shadow_of_serving_json(registry, repository):
    repository.set_live("ident", "1")
    repository.set_canary("ident", "2", 10.0)
    repository.set_shadow("ident", "3")
    await registry.load_repository()
    assert registry.live == {"ident": "1"}
    assert registry.canaries["ident"].version == "2" and registry.shadows["ident"].version == "3"


@pytest.mark.asyncio
async def test_a_poll_applies_a_new_live_version_and_retries_a_refused_one_only_when_renamed(
    registry, repository, runtimes
):
    repository.set_live("ident", "1")
    await registry.load_repository()
    runtimes.broken.add(("ident", "2"))
    repository.set_live("ident", "2")
    await registry.poll()
    await registry.poll()  # the same refused target: not tried again
    assert registry.live == {"ident": "1"} and runtimes.calls.count(("ident", "2")) == 1
    assert registry.failures["ident"].startswith("2: ")
    repository.set_live("ident", "3")
    await registry.poll()
    assert registry.live == {"ident": "3"} and "ident" not in registry.failures


@pytest.mark.asyncio
async def test_a_model_that_does_not_load_at_startup_is_shown_and_others_serve(repository, runtimes):
    publish_identity(repository.root, "other", "1")
    runtimes.broken |= {("ident", v) for v in ("1", "2", "3")}
    registry = ModelRegistry(settings_for(repository.root), repository, runtimes)
    await registry.load_repository()
    try:
        assert registry.live == {"other": "1"} and not registry.all_ready()
        assert registry.readiness()["not_served"] == ["ident"]
        assert registry.failures["ident"].startswith("no version loads")
    finally:
        await registry.close()


@pytest.mark.asyncio
async def test_the_follower_outlives_a_failed_poll_and_shows_it_until_one_succeeds(registry, repository):
    repository.set_live("ident", "1")
    await registry.load_repository()
    serving = repository.root / "ident" / "serving.json"
    serving.unlink()
    serving.mkdir()  # unreadable: every poll fails
    follower = asyncio.create_task(registry.follow(0.01))
    try:
        await until(lambda: "watcher" in registry.background)
        assert registry.background_errors.value(("watcher",)) >= 1
        serving.rmdir()
        repository.set_live("ident", "2")
        await until(lambda: registry.live == {"ident": "2"} and "watcher" not in registry.background)
    finally:
        follower.cancel()


class Unreachable(Repository):
    """A remote repository whose store does not answer."""

    def refresh(self) -> None:
        raise OSError("connection refused by the object store")


@pytest.mark.asyncio
async def test_an_unreachable_repository_serves_nothing_and_says_why(tmp_path, runtimes):
    registry = ModelRegistry(settings_for(tmp_path), Unreachable(tmp_path), runtimes)
    await registry.load_repository()
    assert registry.live == {} and not registry.all_ready()
    assert registry.readiness()["background"] == {"repository": "connection refused by the object store"}
