"""Loaded models: verify, open a session, warm it, start its batcher; look them up by name.

A model version is ready only once its artifact's sha256 matched, its session opened and
it ran at every batch size the batcher will form (powers of two up to max_batch_rows).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.repository import Canary, Repository, RepositoryError, is_valid_name, is_valid_version
from gateway.artifacts.tabular import NUMPY_DTYPES, feeds_from_columns
from gateway.batching import BatchReport, MicroBatcher
from gateway.errors import NotFound, Unavailable, first_line, public_reason
from gateway.lifecycle.shadow import Shadow
from gateway.observability.metrics import Counter
from gateway.observability.telemetry import Telemetry
from gateway.records.codec import RecordCodec
from gateway.runtime import ModelLoadError, OrtRuntime, Runtime
from gateway.settings import Settings, usable_cpus
from gateway.v2 import protocol as protocol_v2
from gateway.v2.triton import ModelStats

log = logging.getLogger("gateway.registry")

RuntimeFactory = Callable[[bytes, Manifest, Settings], Runtime]
# What a bad artifact raises on its way in: unreadable, sha256 mismatch, ORT refusing it.
# `load` turns any other exception (a codec that cannot be built, a bug) into a
# ModelLoadError, so one bad model fails alone, whatever it raises.
LOAD_ERRORS = (RepositoryError, OSError, RuntimeError, ValueError)


def short_reason(exc: BaseException) -> str:
    """Why a load failed, for /readyz and the admin API: one line, no absolute paths
    (the repository's location, ONNX Runtime's source files)."""
    return public_reason(exc)


def ort_runtime(model: bytes, manifest: Manifest, settings: Settings) -> Runtime:
    return OrtRuntime(
        model,
        provider=settings.provider,
        threads=settings.threads_per_lane(),
        device_id=settings.device_id,
        name=manifest.name,
    )


@dataclass(eq=False)
class LoadedModel:
    manifest: Manifest
    runtime: Runtime
    batcher: MicroBatcher
    records: RecordCodec | None
    ready: bool = False
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    loaded_at: float = field(default_factory=time.time)
    v2_body_limit: int | None = None  # the largest V2 body a valid request can need
    records_body_limit: int | None = None  # the same for the records API
    stats: ModelStats = field(default_factory=ModelStats)  # Triton's statistics extension

    @property
    def name(self) -> str:
        return self.manifest.name

    @cached_property
    def summary_outputs(self) -> tuple[str | None, str]:
        """The label output (if any) and the value output, summarised per request in the
        access log: looked up once, not per request."""
        label = self.manifest.output("label")
        value = self.manifest.output("value") or self.manifest.outputs[0]
        return (label.name if label is not None else None), value.name

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True, slots=True)
class CanaryRoute:
    """A canary as the hot path reads it: `weight` % as a share of 2**64, compared with a
    64-bit draw. With a routing key the draw is the key's hash (salted by the model name),
    so a client stays on one side, and raising the weight only moves clients onto the
    canary, never back; without a key it is random."""

    version: str
    weight: float
    threshold: int

    @classmethod
    def of(cls, version: str, weight: float) -> CanaryRoute:
        return cls(version, weight, int(weight / 100 * 2**64))

    def takes(self, name: str, key: bytes | None) -> bool:
        if key is None:
            return random.getrandbits(64) < self.threshold
        digest = hashlib.blake2b(name.encode() + b"\x00" + key, digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.threshold


def warmup_feeds(manifest: Manifest, rows: int) -> dict[str, np.ndarray]:
    """Typical inputs for `rows` rows: mid-range numbers, the first known category."""
    if manifest.features:
        columns: dict[str, np.ndarray] = {}
        for f in manifest.features:
            if f.dtype == "string":
                columns[f.name] = np.array([(f.categories or [""])[0]] * rows, dtype=object)
            else:
                mid = ((f.min or 0.0) + (f.max or 0.0)) / 2
                columns[f.name] = np.full(rows, mid)
        return feeds_from_columns(manifest, columns)
    feeds = {}
    for spec in manifest.inputs:
        shape = [rows if i == 0 else max(d, 1) for i, d in enumerate(spec.shape)]
        dtype = NUMPY_DTYPES[spec.datatype]
        feeds[spec.name] = np.full(shape, "", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
    return feeds


def records_body_bound(manifest: Manifest, max_rows: int) -> int | None:
    """The most bytes a valid records request can need: per row, every feature's name and
    value spelt out long (names and strings JSON-escaped at 6 bytes a character), plus a
    header's worth; None when a feature is free text of no stated length."""
    if not manifest.features:
        return None
    row = 2
    for f in manifest.features:
        if f.ignored or f.open_categories:  # any value: no length to bound it by
            return None
        if f.dtype == "string":
            longest = f.max_length or max((len(c) for c in f.categories or []), default=None)
            if longest is None:
                return None
            value = 6 * longest + 2
        else:
            value = protocol_v2.MAX_ELEMENT_BYTES
        row += 6 * len(f.name) + 4 + value
    return 64 * 1024 + max_rows * row


def _max_delay(settings: Settings, runtime: Runtime) -> float:
    """A GPU's fixed cost per call is large: wait a little for fuller batches there."""
    if settings.max_delay_ms is not None:
        return settings.max_delay_ms / 1000
    return 0.002 if runtime.provider == "cuda" else 0.0


def _one_cpu_inline(settings: Settings, runtime: Runtime) -> bool:
    """On one CPU a CPU batch in a thread cannot run beside the event loop; it only adds
    GIL hand-offs (measured: a 4x1024 MLP at 64 connections, one row per batch, 1.7k req/s
    threaded vs 2.8k inline, p99 55 vs 29 ms; full batches the same either way). So there
    every batch runs inline, unless the inline budget is 0 (never)."""
    return usable_cpus() == 1 and runtime.provider == "cpu" and settings.inline_budget_us > 0


def warmup_sizes(max_batch_rows: int) -> list[int]:
    sizes = [1 << i for i in range(max_batch_rows.bit_length()) if 1 << i <= max_batch_rows]
    return sizes if sizes[-1] == max_batch_rows else [*sizes, max_batch_rows]


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
        self._runtime_factory = runtime_factory
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._live: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pinned: set[tuple[str, str]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._refused: dict[str, str | None] = {}  # model -> serving.json target that failed
        self._canaries: dict[str, CanaryRoute] = {}
        self._canary_refused: dict[str, Canary | None] = {}  # model -> serving.json canary that failed
        self._shadows: dict[str, Shadow] = {}
        self._shadow_refused: dict[str, str | None] = {}
        self.failures: dict[str, str] = {}
        self._wanted: set[str] = set()  # models the repository holds: each must be served
        self.background: dict[str, str] = {}  # background task -> why it last failed
        self.background_errors = self.telemetry.registry.add(
            Counter(
                "gateway_background_errors_total",
                "Errors in background tasks (serving.json watcher, metrics publisher).",
                ("task",),
            )
        )

    @property
    def live(self) -> dict[str, str]:
        return dict(self._live)

    @property
    def canaries(self) -> dict[str, Canary]:
        return {n: Canary(c.version, c.weight) for n, c in self._canaries.items()}

    @property
    def shadows(self) -> dict[str, Shadow]:
        return dict(self._shadows)

    def mirror(
        self, model: LoadedModel, feeds: dict[str, np.ndarray], rows: int, outputs: dict[str, np.ndarray]
    ) -> None:
        """Hand a request the live version answered to its shadow, if it has one."""
        shadow = self._shadows.get(model.name)
        if shadow is not None and self._live.get(model.name) == model.version:
            shadow.offer(model, feeds, rows, outputs)

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def versions(self, name: str) -> list[str]:
        return [v for (n, v) in self._models if n == name]

    def all_ready(self) -> bool:
        """Every model the repository holds has a live version, loaded and warmed."""
        return bool(self._live) and all(
            (m := self._models.get((n, self._live.get(n, "")))) is not None and m.ready
            for n in self._wanted | set(self._live)
        )

    def readiness(self) -> dict[str, object]:
        """The /readyz body: what serves, what does not and why, and background tasks
        that cannot do their job."""
        body: dict[str, object] = {"ready": self.all_ready(), "models": self.live}
        missing = sorted(n for n in self._wanted if n not in self._live)
        if missing:
            body["not_served"] = missing
        if self.failures:
            body["failures"] = dict(self.failures)
        if self.background:
            body["background"] = dict(self.background)
        return body

    def background_failed(self, task: str, exc: BaseException) -> None:
        """A background task's step failed: log it, count it, and show it until it succeeds."""
        self.background[task] = short_reason(exc)
        self.background_errors.inc((task,))
        log.error(
            "background task failed; it carries on",
            extra={"event": "background_error", "task": task, "error": self.background[task]},
            exc_info=not isinstance(exc, LOAD_ERRORS),
        )

    def body_limit(self, name: str, version: str | None, route: str) -> int:
        """The body limit for a request to this model: the model's own bound where it has
        one (V2 tensors of fixed size), else --max-body-bytes. Never raises: an unknown
        model gets the global limit and its 404 later."""
        if version is None and name in self._canaries:
            return self.settings.max_body_bytes  # either version may answer: the wider bound
        model = self._models.get((name, version if version is not None else self._live.get(name, "")))
        bound = None
        if model is not None:
            bound = model.v2_body_limit if route == "infer" else model.records_body_limit
        return min(bound, self.settings.max_body_bytes) if bound else self.settings.max_body_bytes

    def route(self, name: str, version: str | None, key: bytes | None) -> LoadedModel:
        """The version that answers an inference request: the one its path names, else the
        canary for its share of requests, else the live one. The one place every front
        door resolves a model, so a canary covers them all."""
        if version is None:
            canary = self._canaries.get(name)
            if canary is not None and canary.takes(name, key):
                model = self._models.get((name, canary.version))
                if model is not None and model.ready:  # being retired: the live one answers
                    return model
        return self.get(name, version)

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        model = self._models.get((name, version if version is not None else self._live.get(name, "")))
        if model is None:
            # Names from the URL are checked only on a miss, before they go into a message.
            if not is_valid_name(name) or (version is not None and not is_valid_version(version)):
                raise NotFound(f"no model {name!r}" + (f" version {version!r}" if version else ""))
            if version is None:
                raise NotFound(f"no model {name!r}; loaded: {sorted(self._live)}")
            raise NotFound(f"model {name!r} has no loaded version {version!r}")
        if not model.ready:
            raise Unavailable(f"model {name}:{version} is loading")
        return model

    def _build(self, name: str, version: str) -> LoadedModel:
        """The blocking part of a load, run in a worker thread."""
        manifest, data = self.repository.load_verified(name, version)
        runtime = self._runtime_factory(data, manifest, self.settings)
        # Warm every batch size; the largest that answers within the inline budget (and all
        # below it) will run on the event loop.
        inline_rows, within_budget = 0, True
        for rows in warmup_sizes(self.settings.max_batch_rows):
            feeds = warmup_feeds(manifest, rows)
            try:
                runtime.run(feeds)
            except Exception as exc:  # not ready is the answer, whatever the runtime raised
                raise ModelLoadError(f"warm-up at {rows} rows failed: {first_line(exc)}") from exc
            started = time.perf_counter()
            runtime.run(feeds)
            within_budget &= time.perf_counter() - started <= self.settings.inline_budget_us / 1e6
            if within_budget:
                inline_rows = rows
        if _one_cpu_inline(self.settings, runtime):
            inline_rows = self.settings.max_batch_rows
        records = (
            RecordCodec(manifest, self.settings.request_rows_limit, self.settings.range_policy)
            if manifest.features
            else None
        )
        batcher = MicroBatcher(
            runtime,
            max_batch_rows=self.settings.max_batch_rows,
            max_delay=_max_delay(self.settings, runtime),
            lanes=self.settings.lanes,
            max_queue_rows=self.settings.max_queue_rows,
            name=f"{name}-{version}",
            inline_rows=inline_rows,
        )
        model = LoadedModel(manifest, runtime, batcher, records)
        model.v2_body_limit = protocol_v2.body_bound(manifest, self.settings.request_rows_limit)
        model.records_body_limit = records_body_bound(manifest, self.settings.request_rows_limit)
        batcher.on_batch = partial(self._observe, model)
        return model

    def _observe(self, model: LoadedModel, report: BatchReport) -> None:
        model.batches += 1
        model.rows += report.rows
        model.largest_batch = max(model.largest_batch, report.rows)
        model.stats.batch(report)
        self.telemetry.observe_batch(model, report)

    async def load(self, name: str, version: str) -> LoadedModel:
        existing = self._models.get((name, version))
        if existing is not None:
            return existing
        started = time.perf_counter()
        try:
            # A read that hangs (a network file system, a FIFO the checks missed) fails this
            # version and frees its lock; the thread is left to finish and be discarded.
            model = await asyncio.wait_for(
                asyncio.to_thread(self._build, name, version), self.settings.load_timeout_s
            )
        except TimeoutError:
            raise ModelLoadError(f"loading took longer than {self.settings.load_timeout_s:g} s") from None
        except RepositoryError:
            raise
        except Exception as exc:
            # Whatever went wrong (ONNX Runtime, a codec the manifest cannot describe, a
            # bug): this model is not ready, with a reason that carries no file paths.
            raise ModelLoadError(short_reason(exc)) from exc
        model.batcher.start()
        model.ready = True
        self._models[(name, version)] = model
        self.telemetry.model_loaded(model, live=False)
        log.info(
            "model ready",
            extra={
                "event": "ready",
                "model": name,
                "version": version,
                "provider": model.runtime.provider,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return model

    def set_live(self, name: str, version: str) -> None:
        if (name, version) not in self._models:
            raise NotFound(f"model {name}:{version} is not loaded")
        self._live[name] = version
        for (n, _), model in self._models.items():
            if n == name:
                self.telemetry.model_loaded(model, live=model.version == version)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def switch(
        self, name: str, version: str, persist: Callable[[], object] | None = None, source: str = "repository"
    ) -> tuple[str, str | None]:
        """Make `version` live without a failed request.

        Load, verify and warm it beside the live version; then `persist` (write
        serving.json), switch the route atomically, and let the old version drain its
        queue before it is unloaded. If anything before the switch fails, the old version
        keeps serving and the error propagates.
        """
        async with self._lock(name):
            previous = self._live.get(name)
            try:
                await self.load(name, version)
            except LOAD_ERRORS as exc:
                self.failures[name] = f"{version}: {short_reason(exc)}"
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
            self.failures.pop(name, None)
            self._end_canary(name, keep=version)  # a promote decides the experiment
            if name in self._shadows and self._shadows[name].version == version:
                self._end_shadow(name, keep=version)
            self.telemetry.switches.inc((name, version, "ok"))
            log.info(
                "switched", extra={"event": "switch", "model": name, "version": version,
                                   "previous": previous, "source": source},
            )  # fmt: skip
            if previous is not None and previous != version and (name, previous) not in self._pinned:
                self._retire(name, previous)
        return version, previous

    def _retire(self, name: str, version: str) -> None:
        task = asyncio.get_running_loop().create_task(self._unload_unused(name, version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _unload_unused(self, name: str, version: str) -> None:
        """Unload a version no longer live, unless it became live, canary or pinned again
        before this task ran."""
        canary, shadow = self._canaries.get(name), self._shadows.get(name)
        if self._live.get(name) == version or any(
            c is not None and c.version == version for c in (canary, shadow)
        ):
            return
        if (name, version) not in self._pinned:
            await self.unload(name, version)

    def _end_canary(self, name: str, keep: str | None = None) -> None:
        canary = self._canaries.pop(name, None)
        if canary is None:
            return
        self.telemetry.canary_weight.remove((name, canary.version))
        log.info("canary ended", extra={"event": "canary_end", "model": name, "version": canary.version})
        if canary.version != keep:
            self._retire(name, canary.version)

    def _end_shadow(self, name: str, keep: str | None = None) -> None:
        shadow = self._shadows.pop(name, None)
        if shadow is None:
            return
        shadow.restore()
        if shadow.task is not None:
            shadow.task.cancel()
        log.info("shadow ended", extra={"event": "shadow_end", "model": name, "version": shadow.version,
                                        "report": shadow.report()})  # fmt: skip
        if shadow.version != keep:
            self._retire(name, shadow.version)

    async def set_shadow(
        self,
        name: str,
        version: str | None,
        persist: Callable[[], object] | None = None,
        source: str = "repository",
    ) -> None:
        """Mirror `name`'s live requests to `version` (loaded, verified and warmed first),
        or end the shadow (None)."""
        async with self._lock(name):
            if version is None:
                if persist is not None:
                    persist()
                self._end_shadow(name)
                return
            if name not in self._live:
                raise NotFound(f"model {name!r} has no live version to shadow")
            try:
                candidate = await self.load(name, version)
            except LOAD_ERRORS as exc:
                self.failures[name] = f"shadow {version}: {short_reason(exc)}"
                raise
            if persist is not None:
                persist()
            if name in self._shadows and self._shadows[name].version == version:
                return
            self._end_shadow(name, keep=version)
            shadow = self._shadows[name] = Shadow(candidate, self.telemetry)
            shadow.start()
            log.info("shadow", extra={"event": "shadow", "model": name, "version": version, "source": source})

    async def _follow_shadow(self, name: str, wanted: str | None) -> None:
        current = self._shadows.get(name)
        if (current.version if current else None) == wanted or (
            wanted is not None and self._shadow_refused.get(name) == wanted
        ):
            return
        try:
            await self.set_shadow(name, wanted, source="serving.json")
            self._shadow_refused.pop(name, None)
        except (*LOAD_ERRORS, NotFound):
            self._shadow_refused[name] = wanted

    async def set_canary(
        self, name: str, version: str | None, weight: float, persist: Callable[[], object] | None = None,
        source: str = "repository",
    ) -> None:  # fmt: skip
        """Serve `version` to `weight` % of `name`'s requests beside the live version, or
        end the canary (weight 0). The candidate is loaded, verified and warmed before
        `persist` (write serving.json) and before it takes a request; if it fails, the
        previous routing stays and the error propagates."""
        async with self._lock(name):
            if weight <= 0 or version is None:
                if persist is not None:
                    persist()
                self._end_canary(name)
                return
            if name not in self._live:
                raise NotFound(f"model {name!r} has no live version to set a canary beside")
            try:
                await self.load(name, version)
            except LOAD_ERRORS as exc:
                self.failures[name] = f"canary {version}: {short_reason(exc)}"
                log.error(
                    "canary refused; routing is unchanged",
                    extra={"event": "canary_failed", "model": name, "version": version,
                           "source": source, "error": str(exc)},
                )  # fmt: skip
                raise
            if persist is not None:
                persist()
            self._end_canary(name, keep=version)
            self._canaries[name] = CanaryRoute.of(version, weight)
            self.telemetry.canary_weight.set((name, version), weight)
            log.info(
                "canary", extra={"event": "canary", "model": name, "version": version, "weight": weight,
                                 "live": self._live.get(name), "source": source},
            )  # fmt: skip

    async def _follow_canary(self, name: str, wanted: Canary | None) -> None:
        """Apply serving.json's canary; one that fails to load is retried only when
        serving.json names another."""
        current = self._canaries.get(name)
        have = Canary(current.version, current.weight) if current is not None else None
        if have == wanted or (wanted is not None and self._canary_refused.get(name) == wanted):
            return
        try:
            if wanted is None:
                await self.set_canary(name, None, 0.0, source="serving.json")
            else:
                await self.set_canary(name, wanted.version, wanted.weight, source="serving.json")
            self._canary_refused.pop(name, None)
        except (*LOAD_ERRORS, NotFound):
            self._canary_refused[name] = wanted

    async def load_pinned(self, name: str, version: str) -> LoadedModel:
        """Load a version beside the live one and keep it: its version path reaches it,
        and it stays loaded when it stops being live, until it is unloaded."""
        async with self._lock(name):
            model = await self.load(name, version)
            self._pinned.add((name, version))
            return model

    def is_pinned(self, name: str, version: str) -> bool:
        return (name, version) in self._pinned

    async def load_repository(self) -> None:
        """Load every model's live version; one broken model does not stop the others.
        Without serving.json, the newest version that loads is live."""
        try:
            await asyncio.to_thread(self.repository.refresh)
            names = self.repository.models()
        except Exception as exc:  # an unreachable repository: serve nothing, say why, stay up
            self.background_failed("repository", exc)
            return
        self._wanted = set(names)
        for name in names:
            version = None  # unknown while serving.json is unreadable
            try:
                state = self.repository.serving(name)
                if state is not None:
                    version = state.live
                    await self.switch(name, version, source="startup")
                    await self._follow_canary(name, state.canary)
                    await self._follow_shadow(name, state.shadow)
                else:
                    await self._newest_that_loads(name)
            except Exception as exc:
                reason = short_reason(exc)
                self.failures[name] = reason if version is None else f"{version}: {reason}"
                # The watcher retries only when serving.json names another version.
                self._refused.setdefault(name, version)
                log.error(
                    "model failed to load",
                    extra={"event": "load_failed", "model": name, "error": self.failures[name]},
                )

    async def _newest_that_loads(self, name: str) -> None:
        """Try the versions newest first; the first that loads goes live."""
        versions = self.repository.versions(name)
        if not versions:
            raise RepositoryError(f"model {name!r} has no versions in the repository")
        reasons = []
        for version in reversed(versions):
            try:
                await self.switch(name, version, source="startup")
                return
            except LOAD_ERRORS as exc:
                reasons.append(f"{version}: {short_reason(exc)}")
                log.warning(
                    "no serving.json: skipping a version that does not load",
                    extra={"event": "load_failed", "model": name, "version": version},
                )
        self._refused[name] = versions[-1]
        raise ModelLoadError(f"no version loads ({'; '.join(reasons)})"[:600])

    async def follow(self, interval: float) -> None:
        """Poll serving.json and apply what it says; a refused version is retried only
        when serving.json names another. No error ends the loop: each is logged, counted
        and shown by /readyz until a poll succeeds again."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except Exception as exc:
                self.background_failed("watcher", exc)
            else:
                self.background.pop("watcher", None)

    async def poll(self) -> None:
        """One pass of the watcher: every model's serving.json, applied."""
        await asyncio.to_thread(self.repository.refresh)
        names = self.repository.models()
        self._wanted = set(names) | {n for n in self._wanted if n in self._live}
        problems: list[str] = []
        for name in names:
            try:
                state = self.repository.serving(name)
                target = state.live if state is not None else self.repository.live_version(name)
            except RepositoryError as exc:
                problems.append(f"{name}: {short_reason(exc)}")
                continue
            if target != self._live.get(name) and self._refused.get(name) != target:
                try:
                    await self.switch(name, target, source="serving.json")
                    self._refused.pop(name, None)
                except Exception as exc:  # one bad version fails alone; switch() recorded why
                    self._refused[name] = target
                    if not isinstance(exc, LOAD_ERRORS):
                        self.failures[name] = f"{target}: {short_reason(exc)}"
            await self._follow_canary(name, state.canary if state is not None else None)
            await self._follow_shadow(name, state.shadow if state is not None else None)
        if problems:
            raise RepositoryError("; ".join(problems))

    async def unload(self, name: str, version: str) -> None:
        model = self._models.pop((name, version), None)
        if self._live.get(name) == version:
            del self._live[name]
        canary = self._canaries.get(name)
        if canary is not None and canary.version == version:
            self._canaries.pop(name)
            self.telemetry.canary_weight.remove((name, version))
        shadow = self._shadows.get(name)
        if shadow is not None and shadow.version == version:
            self._shadows.pop(name)
            if shadow.task is not None:
                shadow.task.cancel()
        self._pinned.discard((name, version))
        if model is not None:
            # Lookups can no longer find it; requests already queued are answered first.
            await model.batcher.close()
            model.ready = False
            self.telemetry.model_unloaded(model)
            log.info("unloaded", extra={"event": "unload", "model": name, "version": version})

    async def close(self) -> None:
        """Drain every batcher: queued and running requests are answered first."""
        await asyncio.gather(*(s.stop() for s in self._shadows.values()))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(*(m.batcher.close() for m in self._models.values()))
