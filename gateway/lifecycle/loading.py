"""Loading one model version: verify, open a session, warm it, build its codecs and batcher.

A version is ready only once its artifact's sha256 matched, its session opened and it
ran at every batch size the batcher will form (powers of two up to max_batch_rows).
Nothing here knows which version is live: `Loader` hands back a `LoadedModel` and the
roll-out (`lifecycle/rollout.py`) decides what serves it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.repository import Repository, RepositoryError
from gateway.batching import BatchReport, MicroBatcher
from gateway.errors import public_reason
from gateway.lifecycle.warmup import warm_up
from gateway.observability.telemetry import Telemetry
from gateway.records.codec import RecordCodec
from gateway.runtime import ModelLoadError, OrtRuntime, Runtime
from gateway.settings import Settings, usable_cpus
from gateway.v2 import decode as v2_decode
from gateway.v2 import messages as v2_messages
from gateway.v2.triton import ModelStats

log = logging.getLogger("gateway.registry")

RuntimeFactory = Callable[[bytes, Manifest, Settings], Runtime]
# What a bad artifact raises on its way in: unreadable, sha256 mismatch, ORT refusing it.
# `Loader.load` turns any other exception (a codec that cannot be built, a bug) into a
# ModelLoadError, so one bad model fails alone, whatever it raises.
LOAD_ERRORS = (RepositoryError, OSError, RuntimeError, ValueError)


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
    largest_batch: int = 0
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
            value = v2_messages.MAX_ELEMENT_BYTES
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


class Loader:
    """Builds ready `LoadedModel`s from the repository; registers nothing."""

    def __init__(
        self, settings: Settings, repository: Repository, runtime_factory: RuntimeFactory,
        telemetry: Telemetry,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.repository = repository
        self._runtime_factory = runtime_factory
        self.telemetry = telemetry

    async def load(self, name: str, version: str) -> LoadedModel:
        """Build `name:version` in a worker thread, start its batcher and mark it ready."""
        started = time.perf_counter()
        try:
            # A read that hangs (a network file system, a FIFO the checks missed) fails this
            # version and frees its lock; the thread is left to finish and be discarded.
            model = await asyncio.wait_for(
                asyncio.to_thread(self.build, name, version), self.settings.load_timeout_s
            )
        except TimeoutError:
            raise ModelLoadError(f"loading took longer than {self.settings.load_timeout_s:g} s") from None
        except RepositoryError:
            raise
        except Exception as exc:
            # Whatever went wrong (ONNX Runtime, a codec the manifest cannot describe, a
            # bug): this model is not ready, with a reason that carries no file paths.
            raise ModelLoadError(public_reason(exc)) from exc
        model.batcher.start()
        model.ready = True
        self.telemetry.model_loaded(model.manifest, model.runtime.provider, live=False)
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

    def build(self, name: str, version: str) -> LoadedModel:
        """The blocking part of a load, run in a worker thread."""
        manifest, data = self.repository.load_verified(name, version)
        runtime = self._runtime_factory(data, manifest, self.settings)
        inline_rows = self._warm(manifest, runtime)
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
            batched=manifest.batched,
            ragged=any(
                d < 0 for s in manifest.inputs for d in (s.shape if s.reshape is None else s.reshape)[1:]
            ),
        )
        model = LoadedModel(manifest, runtime, batcher, records)
        model.v2_body_limit = v2_decode.body_bound(manifest, self.settings.request_rows_limit)
        model.records_body_limit = records_body_bound(manifest, self.settings.request_rows_limit)
        batcher.on_batch = partial(self._observe, model)
        return model

    def _warm(self, manifest: Manifest, runtime: Runtime) -> int:
        """Run every batch size; the largest that answers within the inline budget (and all
        below it) will run on the event loop: return it. The policy (what a failure means)
        is warmup's."""
        settings = self.settings
        return warm_up(runtime, manifest, settings.max_batch_rows, settings.inline_budget_us / 1e6)

    def _observe(self, model: LoadedModel, report: BatchReport) -> None:
        model.largest_batch = max(model.largest_batch, report.rows)
        model.stats.batch(report)
        self.telemetry.observe_batch(model.manifest, model.runtime.provider, report)
