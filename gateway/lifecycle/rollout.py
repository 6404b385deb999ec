"""Roll-out: what serves changes here, and never with a failed request.

Switch (promote, rollback), canary, shadow, pinned loads and unload. A candidate is loaded,
verified and warmed beside the live version before anything changes; then the route
switches atomically, and a version no longer needed drains its queue before it is
unloaded. One lock per model keeps these steps in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.errors import NotFound, public_reason
from gateway.lifecycle.loading import LOAD_ERRORS, LoadedModel, Loader
from gateway.lifecycle.shadow import Shadow
from gateway.lifecycle.table import CanaryRoute, ServingTable
from gateway.observability.telemetry import Telemetry

log = logging.getLogger("gateway.registry")


class Rollout:
    def __init__(self, table: ServingTable, loader: Loader, telemetry: Telemetry) -> None:
        self._table = table
        self._loader = loader
        self.telemetry = telemetry
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str, version: str) -> LoadedModel:
        """The loaded version, or load it; loaded is not yet serving."""
        existing = self._table.models.get((name, version))
        if existing is not None:
            return existing
        model = await self._loader.load(name, version)
        self._table.models[(name, version)] = model
        return model

    def set_live(self, name: str, version: str) -> None:
        table = self._table
        if (name, version) not in table.models:
            raise NotFound(f"model {name}:{version} is not loaded")
        table.live[name] = version
        for (n, _), model in table.models.items():
            if n == name:
                live = model.version == version
                self.telemetry.model_loaded(model.manifest, model.runtime.provider, live=live)

    async def switch(
        self, name: str, version: str, persist: Callable[[], object] | None = None, source: str = "repository"
    ) -> tuple[str, str | None]:
        """Make `version` live without a failed request.

        Load, verify and warm it beside the live version; then `persist` (write
        serving.json), switch the route atomically, and let the old version drain its
        queue before it is unloaded. If anything before the switch fails, the old version
        keeps serving and the error propagates.
        """
        table = self._table
        async with self.lock(name):
            previous = table.live.get(name)
            try:
                await self.load(name, version)
            except LOAD_ERRORS as exc:
                table.failures[name] = f"{version}: {public_reason(exc)}"
                self.telemetry.switches.inc((name, version, "failed"))
                log.error(
                    "switch refused; the live version keeps serving",
                    extra={"event": "switch_failed", "model": name, "version": version,
                           "live": previous, "source": source, "error": str(exc)},
                )  # fmt: skip
                raise
            if persist is not None:
                persist()
            self.set_live(name, version)
            table.failures.pop(name, None)
            self._end_canary(name, keep=version)  # a promote decides the experiment
            if name in table.shadows and table.shadows[name].version == version:
                self._end_shadow(name, keep=version)
            self.telemetry.switches.inc((name, version, "ok"))
            log.info(
                "switched", extra={"event": "switch", "model": name, "version": version,
                                   "previous": previous, "source": source},
            )  # fmt: skip
            if previous is not None and previous != version and (name, previous) not in table.pinned:
                self._retire(name, previous)
        return version, previous

    async def set_canary(
        self, name: str, version: str | None, weight: float, persist: Callable[[], object] | None = None,
        source: str = "repository",
    ) -> None:  # fmt: skip
        """Serve `version` to `weight` % of `name`'s requests beside the live version, or
        end the canary (weight 0). The candidate is loaded, verified and warmed before
        `persist` (write serving.json) and before it takes a request; if it fails, the
        previous routing stays and the error propagates."""
        table = self._table
        async with self.lock(name):
            if weight <= 0 or version is None:
                if persist is not None:
                    persist()
                self._end_canary(name)
                return
            if name not in table.live:
                raise NotFound(f"model {name!r} has no live version to set a canary beside")
            try:
                await self.load(name, version)
            except LOAD_ERRORS as exc:
                table.failures[name] = f"canary {version}: {public_reason(exc)}"
                log.error(
                    "canary refused; routing is unchanged",
                    extra={"event": "canary_failed", "model": name, "version": version,
                           "source": source, "error": str(exc)},
                )  # fmt: skip
                raise
            if persist is not None:
                persist()
            self._end_canary(name, keep=version)
            table.canaries[name] = CanaryRoute.of(version, weight)
            self.telemetry.canary_weight.set((name, version), weight)
            log.info(
                "canary", extra={"event": "canary", "model": name, "version": version, "weight": weight,
                                 "live": table.live.get(name), "source": source},
            )  # fmt: skip

    async def set_shadow(
        self, name: str, version: str | None, persist: Callable[[], object] | None = None,
        source: str = "repository",
    ) -> None:  # fmt: skip
        """Mirror `name`'s live requests to `version` (loaded, verified and warmed first),
        or end the shadow (None)."""
        table = self._table
        async with self.lock(name):
            if version is None:
                if persist is not None:
                    persist()
                self._end_shadow(name)
                return
            if name not in table.live:
                raise NotFound(f"model {name!r} has no live version to shadow")
            try:
                candidate = await self.load(name, version)
            except LOAD_ERRORS as exc:
                table.failures[name] = f"shadow {version}: {public_reason(exc)}"
                raise
            if persist is not None:
                persist()
            if name in table.shadows and table.shadows[name].version == version:
                return
            self._end_shadow(name, keep=version)
            budget = self._loader.settings.shadow_max_bytes
            shadow = table.shadows[name] = Shadow(candidate, self.telemetry, budget)
            shadow.start()
            log.info("shadow", extra={"event": "shadow", "model": name, "version": version, "source": source})

    async def load_pinned(self, name: str, version: str) -> LoadedModel:
        """Load a version beside the live one and keep it: its version path reaches it,
        and it stays loaded when it stops being live, until it is unloaded."""
        async with self.lock(name):
            model = await self.load(name, version)
            self._table.pinned.add((name, version))
            return model

    async def unload(self, name: str, version: str) -> None:
        table = self._table
        model = table.models.pop((name, version), None)
        if table.live.get(name) == version:
            del table.live[name]
        canary = table.canaries.get(name)
        if canary is not None and canary.version == version:
            table.canaries.pop(name)
            self.telemetry.canary_weight.remove((name, version))
        shadow = table.shadows.get(name)
        if shadow is not None and shadow.version == version:
            table.shadows.pop(name)
            if shadow.task is not None:
                shadow.task.cancel()
        table.pinned.discard((name, version))
        if model is not None:
            # Lookups can no longer find it; requests already queued are answered first.
            await model.batcher.close()
            model.ready = False
            self.telemetry.model_unloaded(model.manifest, model.runtime.provider)
            log.info("unloaded", extra={"event": "unload", "model": name, "version": version})

    async def close(self) -> None:
        """Drain every batcher: queued and running requests are answered first."""
        table = self._table
        await asyncio.gather(*(s.stop() for s in table.shadows.values()))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(*(m.batcher.close() for m in table.models.values()))

    def _retire(self, name: str, version: str) -> None:
        task = asyncio.get_running_loop().create_task(self._unload_unused(name, version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _unload_unused(self, name: str, version: str) -> None:
        """Unload a version no longer live, unless it became live, canary or pinned again
        before this task ran."""
        table = self._table
        canary, shadow = table.canaries.get(name), table.shadows.get(name)
        if table.live.get(name) == version or any(
            c is not None and c.version == version for c in (canary, shadow)
        ):
            return
        if (name, version) not in table.pinned:
            await self.unload(name, version)

    def _end_canary(self, name: str, keep: str | None = None) -> None:
        canary = self._table.canaries.pop(name, None)
        if canary is None:
            return
        self.telemetry.canary_weight.remove((name, canary.version))
        log.info("canary ended", extra={"event": "canary_end", "model": name, "version": canary.version})
        if canary.version != keep:
            self._retire(name, canary.version)

    def _end_shadow(self, name: str, keep: str | None = None) -> None:
        shadow = self._table.shadows.pop(name, None)
        if shadow is None:
            return
        shadow.restore()
        if shadow.task is not None:
            shadow.task.cancel()
        log.info("shadow ended", extra={"event": "shadow_end", "model": name, "version": shadow.version,
                                        "report": shadow.report()})  # fmt: skip
        if shadow.version != keep:
            self._retire(name, shadow.version)
