"""Loaded models: verify, open a session, warm it, start its batcher; look them up by name.

A model version is ready only once its artifact's sha256 matched, its session opened and
it ran at every batch size the batcher will form (powers of two up to max_batch_rows).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from gateway.batching import BatchReport, MicroBatcher
from gateway.errors import NotFound, Unavailable
from gateway.manifest import Manifest
from gateway.repository import Repository, RepositoryError, is_valid_name, is_valid_version
from gateway.runtime import OrtRuntime, Runtime
from gateway.schemas import RecordCodec
from gateway.settings import Settings
from gateway.tabular import NUMPY_DTYPES, feeds_from_columns
from gateway.telemetry import Telemetry

log = logging.getLogger("gateway.registry")

RuntimeFactory = Callable[[bytes, Manifest, Settings], Runtime]


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

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


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
        self.failures: dict[str, str] = {}

    @property
    def live(self) -> dict[str, str]:
        return dict(self._live)

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def versions(self, name: str) -> list[str]:
        return [v for (n, v) in self._models if n == name]

    def all_ready(self) -> bool:
        return bool(self._live) and all(
            (m := self._models.get((n, v))) is not None and m.ready for n, v in self._live.items()
        )

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        if not is_valid_name(name) or (version is not None and not is_valid_version(version)):
            raise NotFound(f"no model {name!r}" + (f" version {version!r}" if version else ""))
        if version is None:
            version = self._live.get(name)
            if version is None:
                raise NotFound(f"no model {name!r}; loaded: {sorted(self._live)}")
        model = self._models.get((name, version))
        if model is None:
            raise NotFound(f"model {name!r} has no loaded version {version!r}")
        if not model.ready:
            raise Unavailable(f"model {name}:{version} is loading")
        return model

    def _build(self, name: str, version: str) -> LoadedModel:
        """The blocking part of a load, run in a worker thread."""
        manifest, data = self.repository.load_verified(name, version)
        runtime = self._runtime_factory(data, manifest, self.settings)
        for rows in warmup_sizes(self.settings.max_batch_rows):
            runtime.run(warmup_feeds(manifest, rows))
        records = (
            RecordCodec(manifest, self.settings.request_rows_limit, self.settings.range_policy)
            if manifest.features
            else None
        )
        batcher = MicroBatcher(
            runtime,
            max_batch_rows=self.settings.max_batch_rows,
            max_delay=self.settings.max_delay_ms / 1000,
            lanes=self.settings.lanes,
            max_queue_rows=self.settings.max_queue_rows,
            name=f"{name}-{version}",
        )
        model = LoadedModel(manifest, runtime, batcher, records)
        batcher.on_batch = partial(self._observe, model)
        return model

    def _observe(self, model: LoadedModel, report: BatchReport) -> None:
        model.batches += 1
        model.rows += report.rows
        model.largest_batch = max(model.largest_batch, report.rows)
        self.telemetry.observe_batch(model, report)

    async def load(self, name: str, version: str) -> LoadedModel:
        existing = self._models.get((name, version))
        if existing is not None:
            return existing
        started = time.perf_counter()
        model = await asyncio.to_thread(self._build, name, version)
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

    async def load_repository(self) -> None:
        """Load every model's live version; one broken model does not stop the others."""
        for name in self.repository.models():
            try:
                version = self.repository.live_version(name)
                await self.load(name, version)
                self.set_live(name, version)
                self.failures.pop(name, None)
            except (RepositoryError, OSError, RuntimeError, ValueError) as exc:
                self.failures[name] = str(exc)
                log.error(
                    "model failed to load", extra={"event": "load_failed", "model": name, "error": str(exc)}
                )

    async def unload(self, name: str, version: str) -> None:
        model = self._models.pop((name, version), None)
        if self._live.get(name) == version:
            del self._live[name]
        if model is not None:
            model.ready = False
            await model.batcher.close()
            self.telemetry.model_unloaded(model)

    async def close(self) -> None:
        """Drain every batcher: queued and running requests are answered first."""
        await asyncio.gather(*(m.batcher.close() for m in self._models.values()))
