"""`inference.GRPCInferenceService` (the V2 protocol over gRPC) on the HTTP server's loop.

A thin front door: every inference goes through `InferenceCore`, so gRPC calls share the
models, batchers, deadlines, load shedding, metrics (route="grpc_infer"), traces and
access log of the HTTP endpoints. Errors map from the HTTP status the core raises to
the gRPC code of the same meaning, with the same message.

The handlers are built from the service descriptor that protoc generated from
gateway/proto/grpc_service.proto: the method names, paths and message classes come
from the .proto file, not from this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError

from gateway.admission import Admission, connection_caps
from gateway.errors import (
    BadRequest,
    GatewayError,
    Unavailable,
    clip,
    clip_message,
)
from gateway.grpc import codec as grpc_codec
from gateway.grpc.admission import MARKER, AdmissionInterceptor
from gateway.inference import Call, InferenceCore
from gateway.lifecycle.registry import LOAD_ERRORS, ModelRegistry
from gateway.observability.telemetry import Telemetry
from gateway.proto import grpc_service_pb2 as pb
from gateway.settings import Settings
from gateway.v2.service import V2Service, authorize

log = logging.getLogger("gateway.errors")
lifecycle_log = logging.getLogger("gateway.lifecycle")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
ROUTE = "grpc_infer"
STREAM_ROUTE = "grpc_stream_infer"
# HTTP status (what the core raises) -> the gRPC code that means the same.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC's own answer to an oversized message
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# A gRPC code back to the HTTP status it stands for, for a call gRPC itself ended.
CANCELLED = 499
DEADLINE_SLACK_S = 0.005
# Bytes of a non-inference message (names, versions, a few parameters): far above any real one.
CONTROL_MESSAGE_LIMIT = 64 * 1024
# With several workers on one port the marker may land on another worker: wait no longer.
MARK_TIMEOUT_S = 2.0

Metadata = tuple[tuple[str, str], ...]
if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]


def server_options(settings: Settings, connections: int) -> list[tuple[str, int]]:
    """grpc core's own bounds, each checked by a test in tests/security/test_grpc_admission.py."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        # Without it a stream's window grows with the BDP probe to megabytes, buffered for
        # a message nobody has started to read (measured: 4-8 MiB a stream); with it off a
        # message is buffered beyond 64 KiB only once its read is pending and charged.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.max_allowed_incoming_connections", connections),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams),
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
        # A connection with no call open closes as an idle HTTP keep-alive one does.
        ("grpc.max_connection_idle_ms", int(settings.keepalive_s * 1000)),
        # Several workers share the port through SO_REUSEPORT, as uvicorn's do through
        # one inherited socket; a single worker refuses a port already taken.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


def _loopback(host: str) -> str:
    """Where this process reaches its own gRPC port."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _on_termination(callback: Callable[[], object]) -> None:
    """Call `callback` on the loop when SIGTERM or SIGINT comes, after uvicorn's own handler
    (which starts the HTTP drain). Only the main thread may set handlers: elsewhere (a
    server in a test's thread) the lifespan's stop is the only one."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def chained(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            if callable(previous):
                previous(signum, frame)
            loop.call_soon_threadsafe(callback)

        signal.signal(sig, chained)


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _message(exc: GatewayError) -> str:
    """The HTTP error message, and where it applies when the error names a place; clipped
    as the HTTP body is (an 8 MB model name must not come back as an 8 MB status)."""
    if not exc.detail:
        return clip_message(exc.message)
    where = exc.detail[0]
    loc = clip(".".join(str(part) for part in where.get("loc", [])))
    msg = clip(str(where.get("msg")))
    return clip_message(f"{exc.message} (at {loc}: {msg})" if loc else exc.message)


def _trailers(exc: GatewayError, extra: Metadata = ()) -> Metadata:
    """Retry hints for a shed or unavailable call: Retry-After's seconds, and gRPC's own
    pushback (which gRPC's retry policies read) in milliseconds."""
    retry = exc.headers.get("retry-after")
    if retry is None:
        return extra
    return (*extra, ("retry-after", retry), ("grpc-retry-pushback-ms", str(int(retry) * 1000)))


class GrpcService:
    """The service's handlers and the grpc.aio server that runs them."""

    def __init__(self, settings: Settings, registry: ModelRegistry, telemetry: Telemetry) -> None:
        if settings.grpc_port is None:
            raise ValueError("no gRPC port configured")
        self.settings = settings
        self.registry = registry
        self.core = InferenceCore(settings, registry, telemetry)
        self.service = V2Service(settings, registry, self.core)
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._target = ""
        self.serving = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, admission: Admission) -> int:
        """Bind and start; the port bound (the one configured, or the one chosen for 0).
        Every message is read against `admission`, the budget the HTTP door shares."""
        settings = self.settings
        _, connections = connection_caps(settings.max_connections, settings.grpc_max_connections)
        self._admission = AdmissionInterceptor(admission, settings.max_body_bytes, settings.body_timeout_s)
        options = server_options(settings, connections)
        server = grpc.aio.server(options=options, interceptors=(self._admission,))
        server.add_generic_rpc_handlers((self._handlers(),))
        host, port = self.settings.host, self.settings.grpc_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises where older versions returned 0
            raise OSError(f"gRPC cannot bind {address}: {exc}") from None
        if bound == 0:
            raise OSError(f"gRPC cannot bind {address}")
        await server.start()
        self._server, self.serving = server, True
        self._target = f"{_loopback(host)}:{bound}"
        _on_termination(lambda: self.begin_stop(settings.drain_seconds))
        lifecycle_log.info("grpc serving", extra={"event": "grpc_start", "port": bound, "pid": os.getpid()})
        return bound

    def begin_stop(self, grace: float) -> asyncio.Future[None]:
        """Refuse new calls (UNAVAILABLE) from now on; the calls in flight have `grace`.
        Begun at SIGTERM, beside the HTTP drain rather than after it: one drain, not two."""
        if self._stopping is None:
            self.serving = False
            server = self._server
            self._stopping = asyncio.ensure_future(self._drain(server, grace) if server else asyncio.sleep(0))
        return self._stopping

    async def _drain(self, server: grpc.aio.Server, grace: float) -> None:
        """Answer the calls that came before the stop, refuse the rest, then stop grpc."""
        deadline = time.monotonic() + grace
        await self._mark(min(grace, MARK_TIMEOUT_S))
        self._admission.draining = True  # marked or not (its answer is late), refuse from now on
        await self._admission.settled(deadline)
        await server.stop(max(0.0, deadline - time.monotonic()))

    async def _mark(self, timeout: float) -> None:
        """A call to ourselves behind every call already received (see grpc/admission.py)."""
        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(self._target, options=options) as channel:
            live = channel.unary_unary(
                f"/{SERVICE.full_name}/ServerLive",
                request_serializer=_serialize, response_deserializer=pb.ServerLiveResponse.FromString,
            )  # fmt: skip
            marker = ((MARKER, self._admission.marker),)
            with contextlib.suppress(grpc.RpcError, asyncio.TimeoutError):
                await live(pb.ServerLiveRequest(), metadata=marker, timeout=timeout)

    async def stop(self, grace: float) -> None:
        """The stop begun at SIGTERM, or one begun now, finished."""
        await self.begin_stop(grace)
        self._server = None

    def _handlers(self) -> grpc.GenericRpcHandler:
        unary: dict[str, Callable[[Any, Context], Awaitable[Any]]] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelConfig": self.model_config,
            "ModelStatistics": self.model_statistics,
            "RepositoryIndex": self.repository_index,
            "RepositoryModelLoad": self.repository_load,
            "RepositoryModelUnload": self.repository_unload,
        }
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in SERVICE.methods:
            # Inference takes the undecoded bytes: parsed in the handler, hashed for the log.
            if method.name == "ModelInfer":
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self.model_infer, response_serializer=_serialize
                )
            elif method.name == "ModelStreamInfer":
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    self.model_stream_infer, response_serializer=_serialize
                )
            else:  # parsed in the handler: a malformed message is INVALID_ARGUMENT, not UNKNOWN
                request_class = message_factory.GetMessageClass(method.input_type)
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    _answering(unary[method.name], request_class), response_serializer=_serialize
                )
        return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)

    # -- health and metadata: the V2 service's, as messages -------------------------------

    async def server_live(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.serving and self.registry.server_ready())

    async def model_ready(self, request: Any, context: Context) -> Any:
        model = self.service.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=model is not None)

    async def server_metadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    async def model_metadata(self, request: Any, context: Context) -> Any:
        return grpc_codec.model_metadata(self.service.model_metadata(request.name, request.version or None))

    async def model_config(self, request: Any, context: Context) -> Any:
        config = self.service.model_config(request.name, request.version or None)
        versions = config.get("version_policy", {}).get("specific", {}).get("versions", [])
        if not all(v.isdigit() for v in versions):  # the proto's versions are integers
            config.pop("version_policy")
        return pb.ModelConfigResponse(
            config=json_format.ParseDict(config, pb.ModelConfigResponse().config, ignore_unknown_fields=True)
        )

    async def model_statistics(self, request: Any, context: Context) -> Any:
        response = pb.ModelStatisticsResponse()
        for model in self.service.statistics(request.name, request.version or None):
            json_format.ParseDict(
                model.stats.json(model.name, model.version), response.model_stats.add(),
                ignore_unknown_fields=True,
            )  # fmt: skip
        return response

    # -- Triton's repository extension, behind the admin token -----------------------------

    def _authorize(self, context: Context) -> None:
        given = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        authorize(self.settings, [v if isinstance(v, str) else v.decode(errors="replace") for v in given])

    async def repository_index(self, request: Any, context: Context) -> Any:
        self._authorize(context)
        response = pb.RepositoryIndexResponse()
        for entry in self.service.repository_index(request.ready):
            response.models.add(**entry)
        return response

    async def repository_load(self, request: Any, context: Context) -> Any:
        self._authorize(context)
        await self.service.repository_load(request.model_name, "grpc")
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, context: Context) -> Any:
        self._authorize(context)
        await self.service.repository_unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- inference ------------------------------------------------------------------------

    async def _infer(self, call: Call, raw: bytes, remaining: float | None) -> Any:
        grpc_codec.check_sizes(raw)  # every declared count, before the message is built
        try:
            message = pb.ModelInferRequest.FromString(raw)
        except DecodeError as exc:
            raise BadRequest(f"malformed ModelInferRequest: {exc}") from None
        answer = await self.service.infer(
            call, message.model_name, message.model_version or None,
            lambda model: grpc_codec.infer_request(message), raw, remaining=remaining,
        )  # fmt: skip
        return grpc_codec.infer_response(answer)

    def _begin(self, route: str, context: Context) -> Call:
        metadata = dict(context.invocation_metadata() or ())

        def get(key: str) -> bytes | None:
            value = metadata.get(key)
            return value.encode() if isinstance(value, str) else value

        call = self.core.begin(
            route, get("x-request-id"), get("traceparent"), get("tracestate"), f"grpc {route}"
        )
        call.routing_key = get("x-routing-key")
        if call.span is not None:
            call.attributes.update({"rpc.system": "grpc", "rpc.service": SERVICE.full_name})
        return call

    def _finish(self, call: Call, status: int, error: str | None) -> None:
        if call.span is not None:
            code = grpc.StatusCode.OK if status == 200 else CODES.get(status, grpc.StatusCode.INTERNAL)
            call.attributes["rpc.grpc.status_code"] = code.value[0]
        self.core.finish(call, status, error)

    def _trailing(self, call: Call) -> Metadata:
        version = call.outcome.version
        rid = ("x-request-id", call.outcome.request_id)
        return (rid, ("x-model-version", version)) if version is not None else (rid,)

    async def model_infer(self, raw: bytes, context: Context) -> Any:
        call = self._begin(ROUTE, context)
        try:
            response = await self._infer(call, raw, context.time_remaining())
        except GatewayError as exc:
            failure = exc
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            # gRPC cancels at its own reading of the deadline, a hair before or after ours
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            self._finish(call, 504 if expired else CANCELLED, "deadline passed" if expired else "cancelled")
            raise
        except Exception as exc:  # a bug must still answer, and never leak its traceback
            log.exception("unhandled error", extra={"request_id": call.outcome.request_id})
            self._finish(call, 500, type(exc).__name__)
            rid = call.outcome.request_id
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request {rid})")
        else:
            context.set_trailing_metadata(self._trailing(call))
            self._finish(call, 200, None)
            return response
        self._finish(call, failure.status, failure.message)
        await context.abort(
            CODES.get(failure.status, grpc.StatusCode.INTERNAL), _message(failure),
            _trailers(failure, self._trailing(call)),
        )  # fmt: skip

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[Any]:
        """Each request in turn through the same core; an error answers that request only,
        with the request's id so that the client can tell which one it was."""
        async for raw in requests:
            call = self._begin(STREAM_ROUTE, context)
            try:
                response = await self._infer(call, raw, context.time_remaining())
            except GatewayError as exc:
                self._finish(call, exc.status, exc.message)
                yield pb.ModelStreamInferResponse(
                    error_message=_message(exc),
                    infer_response=pb.ModelInferResponse(id=grpc_codec.request_id(raw)),
                )
                continue
            except asyncio.CancelledError:
                self._finish(call, CANCELLED, "cancelled")
                raise
            except Exception as exc:
                log.exception("unhandled error", extra={"request_id": call.outcome.request_id})
                self._finish(call, 500, type(exc).__name__)
                yield pb.ModelStreamInferResponse(error_message="internal error")
                continue
            self._finish(call, 200, None)
            yield pb.ModelStreamInferResponse(infer_response=response)


def _answering(
    handler: Callable[[Any, Context], Awaitable[Any]], request_class: Any
) -> Callable[[bytes, Context], Awaitable[Any]]:
    """A non-inference handler, given its parsed message, whose GatewayError becomes its
    gRPC status."""
    name = request_class.DESCRIPTOR.name

    async def answer(raw: bytes, context: Context) -> Any:
        try:
            if len(raw) > CONTROL_MESSAGE_LIMIT:  # before a parse: a map of 700 k entries took 16 s
                raise BadRequest(f"a {name} of {len(raw)} bytes; the limit is {CONTROL_MESSAGE_LIMIT}")
            try:
                request = request_class.FromString(raw)
            except DecodeError as exc:
                log.warning("malformed message", extra={"event": "grpc_malformed", "grpc_message": name})
                raise BadRequest(f"malformed {name}: {exc}") from None
            return await handler(request, context)
        except GatewayError as exc:
            failure = exc
        except LOAD_ERRORS as exc:  # a repository that cannot be read right now
            failure = Unavailable(f"the model repository cannot be read: {exc}")
        code = CODES.get(failure.status, grpc.StatusCode.INTERNAL)
        await context.abort(code, _message(failure), _trailers(failure))

    return answer
