"""Every answer that is not a 2xx, on any Starlette route, goes to the access log.

The inference endpoints log every request themselves; this covers the rest (metadata,
health, config, statistics, admin, and paths no route matches), so that a tool that fails
against the gateway can be diagnosed from the log: which route, which status, and why.
Successful answers pass through untouched; only a failure's body is looked at.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import ECHO_LIMIT, clip, clip_message
from gateway.http.asgi import request_id
from gateway.observability.telemetry import Telemetry
from gateway.types import ASGIApp, Message, Receive, Scope, Send

_REASON_BYTES = 2048  # error bodies are small; never hold more of one than this


class LogFailures:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.telemetry.access_log.enabled():
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        body = bytearray()
        rid = b""

        async def watch(message: Message) -> None:
            nonlocal status, rid
            if message["type"] == "http.response.start":
                status = message["status"]
                if not 200 <= status < 300:
                    message, rid = _with_request_id(scope, message)
            elif message["type"] == "http.response.body" and not 200 <= status < 300:
                body.extend(message.get("body", b"")[: _REASON_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not 200 <= status < 300:
                self._log(scope, status or 500, bytes(body), rid, time.perf_counter() - started)

    def _log(self, scope: Scope, status: int, body: bytes, rid: bytes, seconds: float) -> None:
        route = scope.get("route")
        entry: dict[str, Any] = {
            "event": "request",
            "request_id": clip(rid.decode(errors="replace")) or None,  # the answer's own
            "route": getattr(route, "path", None) or "unmatched",
            "method": scope["method"],
            "path": clip(scope["path"]),
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "error": _reason(body),
        }
        self.telemetry.access_log.emit(entry)


def _with_request_id(scope: Scope, message: Message) -> tuple[Message, bytes]:
    """The answer's X-Request-ID, set here when the route did not set one, so the log line
    and the answer carry the same id (RequestIdHeader keeps one already there)."""
    headers = list(message.get("headers", []))
    for key, value in headers:
        if key.lower() == b"x-request-id":
            return message, bytes(value)
    value = request_id(scope).encode()
    return {**message, "headers": [*headers, (b"x-request-id", value)]}, value


def _reason(body: bytes) -> str:
    """The `error` of a JSON error body, else the body's start."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return clip(body[: 4 * ECHO_LIMIT].decode(errors="replace")) or "no body"
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return clip_message(payload["error"])
    return clip(body[: 4 * ECHO_LIMIT].decode(errors="replace"))
