"""Loaded models looked up by name: routing, body limits and readiness.

The one place every front door resolves a model (`route`), and what /readyz says. The
registry wires the lifecycle together and is what the app, the admin API and gRPC hold:
loading lives in `lifecycle/loading.py`, changes to what serves in `lifecycle/rollout.py`,
and following `serving.json` in `lifecycle/follower.py`; all share one `ServingTable` (`lifecycle/table.py`).
"""

from __future__ import annotations

import logging

from gateway.artifacts.repository import Canary, Repository, is_valid_name, is_valid_version
from gateway.errors import NotFound, Unavailable, public_reason
from gateway.lifecycle.follower import Follower
from gateway.lifecycle.loading import LOAD_ERRORS, LoadedModel, Loader, RuntimeFactory, ort_runtime
from gateway.lifecycle.rollout import Rollout
from gateway.lifecycle.shadow import Shadow
from gateway.lifecycle.table import CanaryRoute, ServingTable
from gateway.observability.telemetry import Telemetry
from gateway.settings import Settings
from gateway.types import Arrays

# Re-exported: what the front doors, the app and the tests import from the registry.
__all__ = [
    "LOAD_ERRORS",
    "CanaryRoute",
    "LoadedModel",
    "ModelRegistry",
    "RuntimeFactory",
    "ort_runtime",
]

log = logging.getLogger("gateway.registry")


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        runtime_factory: RuntimeFactory = ort_runtime,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self._table = table = ServingTable()
        self.failures = table.failures
        self.background = table.background
        self.background_errors = self.telemetry.background_errors
        self.loader = Loader(settings, repository, runtime_factory, self.telemetry)
        self.rollout = Rollout(table, self.loader, self.telemetry)
        self.follower = Follower(repository, table, self.rollout, self.background_failed)
        # What changes the serving table, as the app, the admin API and gRPC call it.
        self.load = self.rollout.load
        self.switch = self.rollout.switch
        self.set_canary = self.rollout.set_canary
        self.set_shadow = self.rollout.set_shadow
        self.load_pinned = self.rollout.load_pinned
        self.unload = self.rollout.unload
        self.close = self.rollout.close
        self._lock = self.rollout.lock  # per-model: a hung load must not keep it (security tests)
        self.load_repository = self.follower.load_repository
        self.poll = self.follower.poll

    @property
    def live(self) -> dict[str, str]:
        return dict(self._table.live)

    @property
    def canaries(self) -> dict[str, Canary]:
        return {n: Canary(c.version, c.weight) for n, c in self._table.canaries.items()}

    @property
    def shadows(self) -> dict[str, Shadow]:
        return dict(self._table.shadows)

    def loaded(self) -> list[LoadedModel]:
        return list(self._table.models.values())

    def versions(self, name: str) -> list[str]:
        return [v for (n, v) in self._table.models if n == name]

    def is_pinned(self, name: str, version: str) -> bool:
        return (name, version) in self._table.pinned

    def route(self, name: str, version: str | None, key: bytes | None) -> LoadedModel:
        """The version that answers an inference request: the one its path names, else the
        canary for its share of requests, else the live one. The one place every front
        door resolves a model, so a canary covers them all."""
        if version is None:
            canary = self._table.canaries.get(name)
            if canary is not None and canary.takes(name, key):
                model = self._table.models.get((name, canary.version))
                if model is not None and model.ready:  # being retired: the live one answers
                    return model
        return self.get(name, version)

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        table = self._table  # the hot path: one lookup, no helper call
        model = table.models.get((name, version if version is not None else table.live.get(name, "")))
        if model is None:
            # Names from the URL are checked only on a miss, before they go into a message.
            if not is_valid_name(name) or (version is not None and not is_valid_version(version)):
                raise NotFound(f"no model {name!r}" + (f" version {version!r}" if version else ""))
            if version is None:
                raise NotFound(f"no model {name!r}; loaded: {sorted(self._table.live)}")
            raise NotFound(f"model {name!r} has no loaded version {version!r}")
        if not model.ready:
            raise Unavailable(f"model {name}:{version} is loading")
        return model

    def mirror(self, model: LoadedModel, feeds: Arrays, rows: int, outputs: Arrays) -> None:
        """Hand a request the live version answered to its shadow, if it has one."""
        shadow = self._table.shadows.get(model.name)
        if shadow is not None and self._table.live.get(model.name) == model.version:
            shadow.offer(model, feeds, rows, outputs)

    def body_limit(self, name: str, version: str | None, route: str) -> int:
        """The body limit for a request to this model: the model's own bound where it has
        one (V2 tensors of fixed size), else --max-body-bytes. Never raises: an unknown
        model gets the global limit and its 404 later."""
        if version is None and name in self._table.canaries:
            return self.settings.max_body_bytes  # either version may answer: the wider bound
        model = self._table.model(name, version)
        bound = None
        if model is not None:
            bound = model.v2_body_limit if route == "infer" else model.records_body_limit
        return min(bound, self.settings.max_body_bytes) if bound else self.settings.max_body_bytes

    def all_ready(self) -> bool:
        """Every model the repository holds has a live version, loaded and warmed."""
        live = self._table.live
        return bool(live) and all(
            (m := self._table.models.get((n, live.get(n, "")))) is not None and m.ready
            for n in self._table.wanted | set(live)
        )

    def server_ready(self) -> bool:
        """Triton's server readiness (V2 /v2/health/ready, gRPC ServerReady): something
        serves and every version that loaded is ready. A model that failed to load answers
        not-ready on its own model-ready endpoint, and makes /readyz (the orchestrator's
        probe, all_ready: every wanted model live) fail, but not every client's server
        check: clients of the models that work keep a ready server, as with Triton."""
        return bool(self._table.live) and all(m.ready for m in self._table.models.values())

    def readiness(self) -> dict[str, object]:
        """The /readyz body: what serves, what does not and why, and background tasks
        that cannot do their job."""
        body: dict[str, object] = {"ready": self.all_ready(), "models": self.live}
        missing = sorted(n for n in self._table.wanted if n not in self._table.live)
        if missing:
            body["not_served"] = missing
        if self.failures:
            body["failures"] = dict(self.failures)
        if self.background:
            body["background"] = dict(self.background)
        return body

    async def follow(self, interval: float) -> None:
        """The follower's loop, each step through `self.poll`: whatever stands there (a
        test's injected fault included) is what the loop survives."""
        await self.follower.follow(interval, lambda: self.poll())  # noqa: PLW0108 (read at each step)

    def background_failed(self, task: str, exc: BaseException) -> None:
        """A background task's step failed: log it, count it, and show it until it succeeds."""
        self.background[task] = public_reason(exc)
        self.background_errors.inc((task,))
        log.error(
            "background task failed; it carries on",
            extra={"event": "background_error", "task": task, "error": self.background[task]},
            exc_info=not isinstance(exc, LOAD_ERRORS),
        )
