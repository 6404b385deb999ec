"""Lookup, routing and readiness (`gateway/lifecycle/registry.py`): which version answers a
request, what a miss says, the body limit a request gets, and what /readyz reports."""

from __future__ import annotations

import numpy as np
import pytest
import pytest_asyncio

from gateway.errors import NotFound, Unavailable
from gateway.lifecycle.registry import CanaryRoute, ModelRegistry
from tests.lifecycle.conftest import settings_for, until


@pytest_asyncio.fixture
async def registry(repo, repository, runtimes, telemetry):
    registry = ModelRegistry(settings_for(repo, max_body_bytes=1 << 20), repository, runtimes, telemetry)
    yield registry
    await registry.close()


@pytest.mark.asyncio
async def test_get_finds_the_live_or_the_named_version_and_says_what_is_missing(registry):
    await registry.switch("ident", "1")
    await registry.load_pinned("ident", "2")
    assert registry.get("ident").version == "1" and registry.get("ident", "2").version == "2"
    with pytest.raises(NotFound, match=r"^no model 'other'; loaded: \['ident'\]$"):
        registry.get("other")
    with pytest.raises(NotFound, match=r"^model 'ident' has no loaded version '3'$"):
        registry.get("ident", "3")
    with pytest.raises(NotFound, match=r"^no model '\.\./x'$"):  # no list of what is loaded
        registry.get("../x")
    registry.get("ident", "2").ready = False
    with pytest.raises(Unavailable, match="is loading"):
        registry.get("ident", "2")


@pytest.mark.asyncio
async def test_a_canary_takes_its_share_unless_the_path_names_a_version(registry):
    await registry.switch("ident", "1")
    await registry.set_canary("ident", "2", 100.0)
    assert registry.route("ident", None, None).version == "2"
    assert registry.route("ident", "1", None).version == "1"  # a version path is never rerouted
    await registry.set_canary("ident", "2", 50.0)
    keys = [f"client-{i}".encode() for i in range(200)]
    sides = [registry.route("ident", None, k).version for k in keys]
    assert sides == [registry.route("ident", None, k).version for k in keys]  # sticky per key
    assert 60 < sides.count("2") < 140
    registry.get("ident", "2").ready = False  # being retired: the live version answers
    assert {registry.route("ident", None, k).version for k in keys} == {"1"}


def test_a_canary_route_moves_clients_only_onto_the_canary_as_its_weight_grows():
    keys = [f"k{i}".encode() for i in range(500)]
    small, large = CanaryRoute.of("2", 10.0), CanaryRoute.of("2", 30.0)
    on_small = {k for k in keys if small.takes("m", k)}
    on_large = {k for k in keys if large.takes("m", k)}
    assert on_small < on_large and 20 < len(on_small) < 80
    assert not any(CanaryRoute.of("2", 0.0).takes("m", k) for k in keys)
    assert all(CanaryRoute.of("2", 100.0).takes("m", None) for _ in range(100))


@pytest.mark.asyncio
async def test_the_body_limit_is_the_models_own_bound_or_the_global_one(registry):
    await registry.switch("ident", "1")
    bound = registry.get("ident").v2_body_limit
    assert bound is not None and bound < 1 << 20
    assert registry.body_limit("ident", None, "infer") == bound
    assert registry.body_limit("ident", None, "predict") == 1 << 20  # no features: no records bound
    assert registry.body_limit("missing", None, "infer") == 1 << 20  # never raises: its 404 comes later
    await registry.set_canary("ident", "2", 5.0)
    assert registry.body_limit("ident", None, "infer") == 1 << 20  # either version may answer


@pytest.mark.asyncio
async def test_readiness_lists_what_does_not_serve_and_why(registry, repository, runtimes):
    assert not registry.all_ready()  # nothing live yet
    runtimes.broken |= {("ident", v) for v in ("1", "2", "3")}
    await registry.load_repository()
    body = registry.readiness()
    assert body["ready"] is False and body["models"] == {} and body["not_served"] == ["ident"]
    assert "refused ident:1 by the test" in body["failures"]["ident"]
    runtimes.broken.clear()
    await registry.switch("ident", "1")
    assert registry.readiness() == {"ready": True, "models": {"ident": "1"}}


@pytest.mark.asyncio
async def test_a_background_failure_is_counted_and_shown_without_paths(registry):
    registry.background_failed("metrics_publisher", OSError("[Errno 28] No space left: '/var/secret/m'"))
    assert "/var/secret" not in registry.readiness()["background"]["metrics_publisher"]
    assert registry.background_errors.value(("metrics_publisher",)) == 1


@pytest.mark.asyncio
async def test_only_requests_the_live_version_answered_are_mirrored(registry):
    await registry.switch("ident", "1")
    await registry.load_pinned("ident", "3")
    await registry.set_shadow("ident", "2")
    shadow = registry.shadows["ident"]
    feeds, outputs = {"x": np.ones((1, 4), np.float32)}, {"y": np.full((1, 4), 2.0, np.float32)}
    registry.mirror(registry.get("ident", "3"), feeds, 1, outputs)
    assert shadow.queue.qsize() == 0 and shadow.mirrored == 0
    registry.mirror(registry.get("ident"), feeds, 1, outputs)
    await until(lambda: shadow.mirrored == 1)
