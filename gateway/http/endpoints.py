"""Endpoints. The two inference endpoints are plain ASGI callables (Starlette routes them
but builds no Request object); the rest are small Starlette handlers off the hot path.

The inference path, top to bottom: read the body within its limit, then the shared
sequence in gateway.inference (find the model, decode and validate, queue on its batcher
with a deadline, encode), then answer with the status its errors map to.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    Unprocessable,
    UnsupportedMediaType,
)
from gateway.explain import answer as explain_answer
from gateway.explain import cache as explain_cache
from gateway.http import compression
from gateway.http.asgi import (
    JSON,
    MSGPACK,
    ClientDisconnected,
    header,
    headers_of,
    media_type,
    read_body,
    send_response,
)
from gateway.inference import Call, Decoded, InferenceCore, deadline_after
from gateway.lifecycle.registry import LoadedModel, ModelRegistry
from gateway.observability.logging import error_with_fields
from gateway.observability.telemetry import Telemetry
from gateway.records.codec import RecordCodec
from gateway.settings import Settings
from gateway.types import Receive, Scope, Send
from gateway.v2 import encode as v2_encode
from gateway.v2 import messages as v2_messages
from gateway.v2 import parse as v2_parse
from gateway.v2.service import V2Service

log = logging.getLogger("gateway.errors")

_msgpack_encoder = msgspec.msgpack.Encoder()


def deadline_from(scope: Scope, settings: Settings, timeout_us: object = None) -> float:
    """Monotonic deadline: V2 `timeout` parameter (µs), X-Request-Timeout (ms), or the default."""
    return deadline_after(settings, timeout_us, headers_of(scope).get(b"x-request-timeout"))


class InferenceEndpoint:
    """The inference request path; subclasses supply the protocol's decode and encode."""

    route = "inference"
    media_types: tuple[bytes, ...] = (JSON, MSGPACK)

    def __init__(self, settings: Settings, registry: ModelRegistry, telemetry: Telemetry) -> None:
        self.settings = settings
        self.core = InferenceCore(settings, registry, telemetry)
        self._span_name = f"POST {self.route}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        get = headers_of(scope).get
        call = self.core.begin(
            self.route, get(b"x-request-id"), get(b"traceparent"), get(b"tracestate"), self._span_name
        )
        call.routing_key = get(b"x-routing-key")
        headers: list[tuple[bytes, bytes]] = [(b"x-request-id", call.outcome.request_id.encode())]
        status, error = 200, None
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST")
            raw = await self._body(scope, receive)
            body, extra = await self.answer(call, scope, raw)
            headers += extra
        except ClientDisconnected:
            self._finish(call, 499, "client disconnected")
            return
        except GatewayError as exc:
            status, error, body = exc.status, error_with_fields(exc.message, exc.detail), exc.body()
            headers += [(k.encode(), v.encode()) for k, v in exc.headers.items()]
            headers.append((b"content-type", JSON))
        except Exception as exc:  # a bug must still answer, and never leak its traceback
            log.exception("unhandled error", extra={"request_id": call.outcome.request_id})
            status, error = 500, type(exc).__name__
            body = orjson.dumps({"error": "internal error", "request_id": call.outcome.request_id})
            headers.append((b"content-type", JSON))
        if call.outcome.version is not None:
            headers.append((b"x-model-version", call.outcome.version.encode()))
        if status == 200 and len(body) >= compression.MIN_COMPRESS_BYTES:  # smaller: never worth it
            body, encoding = await compression.encode_response(body, get(b"accept-encoding"))
            if encoding is not None:
                headers += [(b"content-encoding", encoding), (b"vary", b"accept-encoding")]
        await send_response(send, status, body, headers)
        self._finish(call, status, error)

    def _finish(self, call: Call, status: int, error: str | None) -> None:
        if call.span is not None:
            call.attributes.update({
                "http.request.method": "POST", "http.route": self.route, "http.response.status_code": status,
            })  # fmt: skip
        self.core.finish(call, status, error)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        kind = media_type(scope)
        if kind not in self.media_types:
            raise UnsupportedMediaType(
                f"Content-Type {kind.decode(errors='replace')!r} is not accepted; use "
                + " or ".join(a.decode() for a in self.media_types)
            )
        params = scope["path_params"]  # the model's own bound: 413 before megabytes are parsed
        limit = self.core.registry.body_limit(params["name"], params.get("version"), self.route)
        raw = await read_body(scope, receive, limit, self.settings.body_timeout_s)
        body = compression.decode_body(raw, headers_of(scope).get(b"content-encoding"), limit)
        hold = scope.get("gateway.hold")  # admission's charge for a compressed body, inflated
        if hold is not None and len(body) > len(raw) and not hold(len(body) - len(raw)):
            raise Overloaded("the server is at its limit of bytes in flight; retry shortly")
        return body

    async def answer(self, call: Call, scope: Scope, raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        raise NotImplementedError


class PredictEndpoint(InferenceEndpoint):
    """`/v1/models/{name}[/versions/{version}]/predict`: named-feature records."""

    route = "predict"

    async def answer(self, call: Call, scope: Scope, raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        params = scope["path_params"]
        model = self.core.resolve(call, params["name"], params.get("version"))
        decoded = self.decode(model, scope, raw)  # no await since resolve: see InferenceCore.resolve
        outputs = await self.core.run(call, model, decoded)
        answer = self.encode(model, scope, decoded, outputs)
        self.core.record(call, model, decoded, outputs, raw)
        return answer

    def decode(self, model: LoadedModel, scope: Scope, body: bytes) -> Decoded:
        if model.records is None:
            raise NotFound(
                f"model {model.name!r} takes tensors, not records: use /v2/models/{model.name}/infer"
            )
        payload, form = model.records.decode(body, media_type(scope) == MSGPACK)
        feeds, rows = model.records.to_feeds(payload, form)
        return Decoded(feeds, rows, deadline_from(scope, self.settings), model.records)

    def encode(
        self, model: LoadedModel, scope: Scope, decoded: Decoded, outputs: dict[str, np.ndarray]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        codec: RecordCodec = decoded.request
        predictions = codec.encode(outputs)
        if headers_of(scope).get(b"accept") == MSGPACK:  # the same predictions, re-encoded
            payload = {"model": model.name, "version": model.version}
            payload["predictions"] = orjson.loads(predictions)
            return _msgpack_encoder.encode(payload), [(b"content-type", MSGPACK)]
        return codec.head + predictions + b"}", [(b"content-type", JSON)]


class ExplainEndpoint(PredictEndpoint):
    """`/v1/models/{name}[/versions/{version}]/explain`: the predict bodies; per row the
    prediction and each user column's contribution to it. The prediction comes from the
    batcher as predict's does; the attribution runs in a worker thread, off the loop."""

    route = "explain"

    def __init__(self, settings: Settings, registry: ModelRegistry, telemetry: Telemetry) -> None:
        super().__init__(settings, registry, telemetry)
        self.explainers = explain_cache.shared(registry.repository)

    def decode(self, model: LoadedModel, scope: Scope, body: bytes) -> Decoded:
        msgpack = media_type(scope) == MSGPACK
        body, given = explain_answer.body_parameters(body, msgpack, [f.name for f in model.manifest.features])
        asked = explain_answer.options(scope.get("query_string", b""), given)
        if model.records is None or model.manifest.explain is None:
            raise Unprocessable(
                f"model {model.name!r} has nothing to explain by: "
                + ("it takes tensors, not named columns" if model.records is None
                   else "its manifest records no explanation method; convert it again with a sample")
            )  # fmt: skip
        klass = explain_answer.class_index(model.manifest, asked)
        payload, form = model.records.decode(body, msgpack)
        feeds, rows = model.records.to_feeds(payload, form)
        explain_answer.check_rows(rows, model.manifest.explain.method)
        return Decoded(feeds, rows, deadline_from(scope, self.settings), (model.records, asked, klass))

    def encode(
        self, model: LoadedModel, scope: Scope, decoded: Decoded, outputs: dict[str, np.ndarray]
    ) -> Any:
        codec, asked, klass = decoded.request
        predictions = orjson.loads(codec.encode(outputs))
        msgpack = header(scope, b"accept") == MSGPACK
        return model, decoded.feeds, predictions, asked, klass, msgpack

    async def answer(self, call: Call, scope: Scope, raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """Predict's sequence (its encode here keeps what the attribution needs), then the
        attribution: off the event loop, after the batch."""
        return await self.complete(await super().answer(call, scope, raw))

    async def complete(self, result: Any) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        model, feeds, predictions, asked, klass, msgpack = result
        explainer = await self.explainers.get(model)
        attribution = await asyncio.to_thread(explainer.attribute, feeds, asked.samples)
        payload = {"model": model.name, "version": model.version, "explanations":
                   explain_answer.explanations(model.manifest, predictions, attribution, klass,
                                               asked.top, asked.samples)}  # fmt: skip
        if msgpack:
            return _msgpack_encoder.encode(payload), [(b"content-type", MSGPACK)]
        return orjson.dumps(payload), [(b"content-type", JSON)]


class InferV2Endpoint(InferenceEndpoint):
    """`/v2/models/{name}[/versions/{version}]/infer`: the V2 service's inference over HTTP."""

    route = "infer"
    media_types = (JSON, MSGPACK, b"application/octet-stream")

    def __init__(self, settings: Settings, registry: ModelRegistry, telemetry: Telemetry) -> None:
        super().__init__(settings, registry, telemetry)
        self.service = V2Service(settings, registry, self.core)

    async def answer(self, call: Call, scope: Scope, raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        params = scope["path_params"]
        # The service's infer, its run awaited here: one coroutine fewer per request.
        model, decoded, explaining = self.service.prepare(
            call, params["name"], params.get("version"), lambda model: self.read(model, scope, raw),
            headers_of(scope).get(b"x-request-timeout"),
        )  # fmt: skip
        arrays = await self.core.run(call, model, decoded)
        answer = self.service.conclude(call, model, decoded, arrays, raw)
        if explaining is not None:
            await self.service.explain(answer, decoded, arrays, explaining)
        return v2_encode.encode_infer(answer.model.manifest, answer.request, answer.outputs)

    @staticmethod
    def read(model: LoadedModel, scope: Scope, body: bytes) -> tuple[v2_messages.InferRequest, bytes]:
        binary_length = headers_of(scope).get(_BINARY_HEADER)
        if binary_length is not None and binary_length.strip() == b"0":
            return v2_parse.raw_binary_request(model.manifest, body)
        request, tail = v2_parse.parse_request(
            body, binary_length.decode() if binary_length is not None else None, media_type(scope) == MSGPACK
        )
        _check_body_model(request, model)
        return request, tail


_BINARY_HEADER = v2_messages.BINARY_HEADER.encode()


def _check_body_model(request: v2_messages.InferRequest, model: LoadedModel) -> None:
    """KServe's client repeats the model in the body: it must name what the URL serves."""
    if request.model_name is not None and request.model_name != model.name:
        raise BadRequest(
            f"model_name {request.model_name!r} in the body does not match {model.name!r} in the URL",
            [{"loc": ["body", "model_name"], "msg": f"expected {model.name!r}"}],
        )
    if request.model_version and request.model_version != model.version:
        raise BadRequest(
            f"model_version {request.model_version!r} in the body does not match version "
            f"{model.version!r} that the URL serves; to pick a version, use "
            f"/v2/models/{model.name}/versions/{{version}}/infer",
            [{"loc": ["body", "model_version"], "msg": f"expected {model.version!r}"}],
        )


def _stats(model: LoadedModel) -> dict[str, Any]:
    # Beside Triton's fields, two of our own that Triton's clients ignore.
    return model.stats.json(model.name, model.version) | {
        "largest_batch_rows": model.largest_batch,
        "queued_rows": model.batcher.queued_rows,
    }


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


def error_response(exc: GatewayError) -> Response:
    return Response(exc.body(), exc.status, exc.headers, media_type="application/json")


class Endpoints:
    """Health, readiness and the V2 service's metadata: small Starlette handlers."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.service = V2Service(settings, registry)

    async def healthz(self, request: Request) -> Response:
        return json_response({"live": True})

    async def readyz(self, request: Request) -> Response:
        body = self.registry.readiness()
        return json_response(body, 200 if body["ready"] else 503)

    async def server_ready(self, request: Request) -> Response:
        """V2 server readiness: Triton's rule (registry.server_ready), with /readyz's body."""
        body = self.registry.readiness() | {"ready": self.registry.server_ready()}
        return json_response(body, 200 if body["ready"] else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.service.server_metadata())

    @staticmethod
    def _names(request: Request) -> tuple[str, str | None]:
        return request.path_params["name"], request.path_params.get("version")

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self.service.model_metadata(*self._names(request)))

    async def model_ready(self, request: Request) -> Response:
        try:
            model = self.service.model_ready(*self._names(request))
        except NotFound as exc:
            return error_response(exc)
        if model is None:
            return json_response({"name": request.path_params["name"], "ready": False}, 503)
        return json_response({"name": model.name, "version": model.version, "ready": True})

    async def model_config(self, request: Request) -> Response:
        """Triton's model configuration extension (perf_analyzer reads it first)."""
        return json_response(self.service.model_config(*self._names(request)))

    async def model_stats(self, request: Request) -> Response:
        """Triton's statistics extension: one model's versions (or the one named), or,
        on /v2/models/stats, every loaded model."""
        name, version = request.path_params.get("name"), request.path_params.get("version")
        return json_response({"model_stats": [_stats(m) for m in self.service.statistics(name, version)]})

    async def shared_memory_status(self, request: Request) -> Response:
        """Triton's shared memory extensions (system and CUDA), answered honestly: no region."""
        return json_response(self.service.shared_memory_status(request.path_params.get("region")))

    async def shared_memory_register(self, request: Request) -> Response:
        self.service.shared_memory_register(request.path_params["region"])
        return json_response({})

    async def shared_memory_unregister(self, request: Request) -> Response:
        self.service.shared_memory_unregister(request.path_params.get("region"))
        return json_response({})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return error_response(NotFound(f"no route for {request.method} {request.url.path}"))

    async def method_not_allowed(self, request: Request, exc: Exception) -> Response:
        response = error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        allow = getattr(exc, "headers", None) or {}  # Starlette's 405 names the methods in Allow
        if "Allow" in allow:
            response.headers["allow"] = allow["Allow"]
        else:
            del response.headers["allow"]
        return response

    async def gateway_error(self, request: Request, exc: Exception) -> Response:
        """What a Starlette handler raises is answered like the hot path's errors."""
        assert isinstance(exc, GatewayError)  # registered for GatewayError only
        return error_response(exc)
