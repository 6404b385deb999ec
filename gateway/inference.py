"""The inference sequence every front door shares, protocol-neutral.

Find the model, decode and validate, queue on its batcher with a deadline, encode, record
the outcome. HTTP records, HTTP V2 and gRPC V2 each supply their own decode and encode and
map `GatewayError` back to their transport (an HTTP status, a gRPC status code); nothing
here knows an ASGI scope or a gRPC context. Values in, values out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import BadRequest, clip_message
from gateway.lifecycle.registry import LoadedModel, ModelRegistry
from gateway.observability.facts import Outcome
from gateway.observability.telemetry import Telemetry, input_digest, summarize
from gateway.settings import Settings
from gateway.types import Arrays

if TYPE_CHECKING:
    from opentelemetry.trace import Span


@dataclass(slots=True)
class Decoded:
    """A validated request, ready for the batcher."""

    feeds: Arrays
    rows: int
    deadline: float
    request: Any = None  # what the encoder needs (records: the codec; V2: the request)


@dataclass(slots=True)
class Call:
    """One request in flight: its outcome so far, its clock and its span (if sampled)."""

    outcome: Outcome
    started: float
    span: Span | None = None
    model: LoadedModel | None = None  # once found: the version that answers
    routing_key: bytes | None = None  # X-Routing-Key: keeps a client on one side of a canary
    logged: bool = False  # the access log wants this request: asked once, at the start
    # Set by the front door: the span attributes naming its protocol.
    attributes: dict[str, Any] = field(default_factory=dict)


REQUEST_ID_LIMIT = 128  # bytes of a caller's request id that we echo and log


def request_id(given: bytes | str | None) -> str:
    """The caller's request id when it is short printable ASCII, else a fresh one: one rule
    for every front door, so a newline, ESC or NUL never reaches a log line or a header."""
    if given and len(given) <= REQUEST_ID_LIMIT and given.isascii():
        text = given if isinstance(given, str) else given.decode()
        if text.isprintable():
            return text
    # Not a secret, just unique enough: getrandbits is ~50x cheaper than os.urandom here.
    return f"{random.getrandbits(64):016x}"


def deadline_after(settings: Settings, timeout_us: object = None, timeout_ms: bytes | None = None) -> float:
    """Monotonic deadline: a V2 `timeout` parameter (µs), else a timeout in ms (the
    X-Request-Timeout header), else the server default. A V2 timeout of 0 is Triton's "no
    timeout" (tritonclient sends it by default): the server default applies."""
    seconds = settings.timeout_ms / 1000
    try:
        if timeout_us is not None and timeout_us != 0:
            if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float):
                raise ValueError
            seconds = float(timeout_us) / 1e6
        elif timeout_ms is not None:
            seconds = float(timeout_ms) / 1000
    except ValueError:
        raise BadRequest("timeout must be a number (X-Request-Timeout in ms, V2 timeout in µs)") from None
    if not 0 < seconds < 86_400:
        raise BadRequest("timeout must be positive and under a day")
    return time.monotonic() + seconds


class InferenceCore:
    """The sequence itself, as plain steps a front door calls in order: `begin`, `resolve`
    (the version that answers), its own decode, `run` (the batcher, with the deadline), its
    own encode, `record` (shadow copy, log summary), then `finish` with the status it
    answered. Every refusal on the way is a `GatewayError`."""

    def __init__(self, settings: Settings, registry: ModelRegistry, telemetry: Telemetry) -> None:
        self.settings = settings
        self.registry = registry
        self.telemetry = telemetry

    def begin(
        self, route: str, rid: bytes | None, traceparent: bytes | None, tracestate: bytes | None,
        span_name: str,
    ) -> Call:  # fmt: skip
        call = Call(Outcome(route, request_id(rid), 200, 0.0), time.perf_counter())
        call.logged = self.telemetry.access_log.enabled()
        if self.telemetry.tracer is not None:
            call.span = self.telemetry.start_span(span_name, traceparent, tracestate)
        return call

    def resolve(self, call: Call, name: str, version: str | None) -> LoadedModel:
        """The version that answers. The caller decodes and runs with no await in between:
        a version switch cannot retire the model then, so no request fails during a switch."""
        model = call.model = self.registry.route(name, version, call.routing_key)
        call.outcome.model, call.outcome.version = model.name, model.version
        return model

    def run(self, call: Call, model: LoadedModel, decoded: Decoded) -> Coroutine[Any, Any, Arrays]:
        """The batcher's answer, to await: its coroutine as it is, not wrapped in one more
        (a coroutine made and resumed per request for nothing)."""
        call.outcome.rows = decoded.rows
        context = call.span.get_span_context() if call.span is not None else None
        return model.batcher.submit(decoded.feeds, decoded.rows, decoded.deadline, context)

    def record(self, call: Call, model: LoadedModel, decoded: Decoded, outputs: Arrays, raw: bytes) -> None:
        """After the answer is encoded: the shadow's copy and the access log's summary."""
        self.registry.mirror(model, decoded.feeds, decoded.rows, outputs)  # queued only: no wait
        if call.logged:
            outcome = call.outcome
            outcome.input_sha256 = input_digest(raw)
            outcome.prediction = summarize(model.summary_outputs, outputs)
            if self.settings.log_inputs:
                outcome.inputs = raw[:4096].decode(errors="replace")

    def finish(self, call: Call, status: int, error: str | None = None) -> None:
        outcome = call.outcome
        # The error may quote a client's text: the log line and the span get it clipped.
        outcome.status, outcome.error = status, None if error is None else clip_message(error)
        outcome.seconds = time.perf_counter() - call.started
        if call.span is not None:
            _end_span(call.span, outcome, call.attributes)
        self.telemetry.observe_request(outcome, call.logged)
        if call.model is not None:  # the request reached its model: Triton's statistics count it
            call.model.stats.request(200 <= status < 300, int(outcome.seconds * 1e9))


def _end_span(span: Span, outcome: Outcome, attributes: dict[str, Any]) -> None:
    from opentelemetry.trace import Status, StatusCode

    outcome.trace_id = format(span.get_span_context().trace_id, "032x")
    span.set_attributes({
        **attributes, "gateway.route": outcome.route, "gateway.request_id": outcome.request_id,
        "gateway.status": outcome.status, "gateway.rows": outcome.rows,
        "model.name": outcome.model or "", "model.version": outcome.version or "",
    })  # fmt: skip
    if outcome.status >= 500:
        span.set_status(Status(StatusCode.ERROR, outcome.error))
    span.end()
