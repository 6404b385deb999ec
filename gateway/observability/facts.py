"""What telemetry is told: plain values about one request and one batch.

Defined here, not by the modules that produce them, so that observability imports no
engine, lifecycle or front-door type: the inference core fills an `Outcome`; the batcher's
`BatchReport` satisfies `BatchFacts` by its shape alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.types import Arrays


@dataclass(slots=True)
class Outcome:
    """What one inference request did, for the access log, metrics and its span.

    `status` is the HTTP status the request got, or for gRPC the one its status code
    stands for (INVALID_ARGUMENT 400, NOT_FOUND 404, UNAVAILABLE 503 ...): one metric
    label and one alert rule cover both protocols, and `route` tells them apart."""

    route: str
    request_id: str
    status: int
    seconds: float
    model: str | None = None
    version: str | None = None
    rows: int = 0
    error: str | None = None
    input_sha256: str | None = None
    prediction: dict[str, Any] | None = None
    inputs: str | None = None
    trace_id: str | None = None


class BatchFacts(Protocol):
    """One dispatched batch as telemetry reads it. Times are time.monotonic()."""

    @property
    def rows(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def enqueued(self) -> Sequence[float]: ...
    @property
    def started(self) -> float: ...
    @property
    def finished(self) -> float: ...
    @property
    def seconds(self) -> float: ...
    @property
    def reason(self) -> str: ...
    @property
    def failed(self) -> bool: ...
    @property
    def contexts(self) -> Sequence[object]: ...
    @property
    def feeds(self) -> Arrays | None: ...
    @property
    def outputs(self) -> Arrays | None: ...
