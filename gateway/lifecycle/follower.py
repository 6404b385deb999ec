"""The `serving.json` follower: the repository says what serves, this makes it so.

At startup every model's live version (and canary, shadow) is loaded; without
`serving.json` the newest version that loads goes live. Then a poll every few seconds
applies what changed, so every worker and every restart agree. A version that failed is
retried only when `serving.json` names another; no error ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.artifacts.repository import Canary, Repository, RepositoryError
from gateway.errors import NotFound, public_reason
from gateway.lifecycle.loading import LOAD_ERRORS
from gateway.lifecycle.rollout import Rollout
from gateway.lifecycle.table import ServingTable
from gateway.runtime import ModelLoadError

log = logging.getLogger("gateway.registry")


class Follower:
    def __init__(
        self, repository: Repository, table: ServingTable, rollout: Rollout,
        background_failed: Callable[[str, BaseException], None],
    ) -> None:  # fmt: skip
        self.repository = repository
        self._table = table
        self._rollout = rollout
        self._background_failed = background_failed
        self._refused: dict[str, str | None] = {}  # model -> serving.json target that failed
        self._canary_refused: dict[str, Canary | None] = {}  # model -> serving.json canary that failed
        self._shadow_refused: dict[str, str | None] = {}

    async def load_repository(self) -> None:
        """Load every model's live version; one broken model does not stop the others.
        Without serving.json, the newest version that loads is live."""
        try:
            await asyncio.to_thread(self.repository.refresh)
            names = self.repository.models()
        except Exception as exc:  # an unreachable repository: serve nothing, say why, stay up
            self._background_failed("repository", exc)
            return
        self._table.wanted = set(names)
        for name in names:
            version = None  # unknown while serving.json is unreadable
            try:
                state = self.repository.serving(name)
                if state is not None:
                    version = state.live
                    await self._rollout.switch(name, version, source="startup")
                    await self._follow_canary(name, state.canary)
                    await self._follow_shadow(name, state.shadow)
                else:
                    await self._newest_that_loads(name)
            except Exception as exc:
                reason = public_reason(exc)
                failures = self._table.failures
                failures[name] = reason if version is None else f"{version}: {reason}"
                # The watcher retries only when serving.json names another version.
                self._refused.setdefault(name, version)
                log.error(
                    "model failed to load",
                    extra={"event": "load_failed", "model": name, "error": failures[name]},
                )

    async def _newest_that_loads(self, name: str) -> None:
        """Try the versions newest first; the first that loads goes live."""
        versions = self.repository.versions(name)
        if not versions:
            raise RepositoryError(f"model {name!r} has no versions in the repository")
        reasons = []
        for version in reversed(versions):
            try:
                await self._rollout.switch(name, version, source="startup")
                return
            except LOAD_ERRORS as exc:
                reasons.append(f"{version}: {public_reason(exc)}")
                log.warning(
                    "no serving.json: skipping a version that does not load",
                    extra={"event": "load_failed", "model": name, "version": version},
                )
        self._refused[name] = versions[-1]
        raise ModelLoadError(f"no version loads ({'; '.join(reasons)})"[:600])

    async def follow(self, interval: float, poll: Callable[[], Awaitable[None]] | None = None) -> None:
        """Poll serving.json (with `poll`, by default `self.poll`) and apply what it says.
        No error ends the loop: each is logged, counted and shown by /readyz until a poll
        succeeds again."""
        step = poll if poll is not None else self.poll
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception as exc:
                self._background_failed("watcher", exc)
            else:
                self._table.background.pop("watcher", None)

    async def poll(self) -> None:
        """One pass of the watcher: every model's serving.json, applied."""
        await asyncio.to_thread(self.repository.refresh)
        names = self.repository.models()
        live = self._table.live
        self._table.wanted = set(names) | {n for n in self._table.wanted if n in live}
        problems: list[str] = []
        for name in names:
            try:
                state = self.repository.serving(name)
                target = state.live if state is not None else self.repository.live_version(name)
            except RepositoryError as exc:
                problems.append(f"{name}: {public_reason(exc)}")
                continue
            if target != live.get(name) and self._refused.get(name) != target:
                try:
                    source = "serving.json" if state else "newest version"
                    await self._rollout.switch(name, target, source=source)
                    self._refused.pop(name, None)
                except Exception as exc:  # one bad version fails alone; switch() recorded why
                    self._refused[name] = target
                    if not isinstance(exc, LOAD_ERRORS):
                        self._table.failures[name] = f"{target}: {public_reason(exc)}"
            await self._follow_canary(name, state.canary if state is not None else None)
            await self._follow_shadow(name, state.shadow if state is not None else None)
        if problems:
            raise RepositoryError("; ".join(problems))

    async def _follow_canary(self, name: str, wanted: Canary | None) -> None:
        """Apply serving.json's canary; one that fails to load is retried only when
        serving.json names another."""
        current = self._table.canaries.get(name)
        have = Canary(current.version, current.weight) if current is not None else None
        if have == wanted or (wanted is not None and self._canary_refused.get(name) == wanted):
            return
        try:
            if wanted is None:
                await self._rollout.set_canary(name, None, 0.0, source="serving.json")
            else:
                await self._rollout.set_canary(name, wanted.version, wanted.weight, source="serving.json")
            self._canary_refused.pop(name, None)
        except (*LOAD_ERRORS, NotFound):
            self._canary_refused[name] = wanted

    async def _follow_shadow(self, name: str, wanted: str | None) -> None:
        current = self._table.shadows.get(name)
        if (current.version if current else None) == wanted or (
            wanted is not None and self._shadow_refused.get(name) == wanted
        ):
            return
        try:
            await self._rollout.set_shadow(name, wanted, source="serving.json")
            self._shadow_refused.pop(name, None)
        except (*LOAD_ERRORS, NotFound):
            self._shadow_refused[name] = wanted
