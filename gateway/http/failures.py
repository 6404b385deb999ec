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

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not 200 <= status < 300:
                body.extend(message.get("body", b"")[: _REASON_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not 200 <= status < 300:
                self._log(scope, status or 500, bytes(body), time.perf_counter() - started)

    def _log(self, scope: Scope, status: int, body: bytes, seconds: float) -> None:
        route = scope.get("route")
        headers = dict(scope["headers"])
        entry: dict[str, Any] = {
            "event": "request",
            "request_id": clip(headers.get(b"x-request-id", b"").decode(errors="replace")) or None,
            "route": getattr(route, "path", None) or "unmatched",
            "method": scope["method"],
            "path": clip(scope["path"]),
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "error": _reason(body),
        }
        self.telemetry.access_log.emit(entry)


def _reason(body: bytes) -> str:
    """The `error` of a JSON error body, else the body's start."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return clip(body[: 4 * ECHO_LIMIT].decode(errors="replace")) or "no body"
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return clip_message(payload["error"])
    return clip(body[: 4 * ECHO_LIMIT].decode(errors="replace"))
