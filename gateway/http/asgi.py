"""The few ASGI primitives the hot path needs, without Starlette's per-request objects."""

from __future__ import annotations

import asyncio

from gateway.deadlines import on_loop
from gateway.errors import BadRequest, RequestTimeout, TooLarge
from gateway.inference import request_id as rule_request_id
from gateway.types import ASGIApp, Message, Receive, Scope, Send

JSON = b"application/json"
MSGPACK = b"application/msgpack"


class ClientDisconnected(Exception):
    """The client went away before its body arrived; there is no one to answer."""


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name, built once per request: the hot path reads
    a dozen of them, each a dict lookup rather than a call."""
    table: dict[bytes, bytes] | None = scope.get("gateway.headers")
    if table is None:
        # The first of repeated headers wins, as in Starlette's Request.headers: one reading
        # of a request everywhere (a second Authorization or Content-Type changes nothing).
        table = scope["gateway.headers"] = dict(reversed(scope["headers"]))
    return table


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header by lower-case name."""
    value = headers_of(scope).get(name)
    return bytes(value) if value is not None else None


async def read_body(scope: Scope, receive: Receive, limit: int, timeout: float = 30.0) -> bytes:
    """The whole body, refusing (413) before reading past `limit` bytes, and (408) a client
    that takes longer than `timeout` seconds to send it (a trickled body holds a task)."""
    declared = headers_of(scope).get(b"content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not an integer") from None
        if length > limit:
            raise TooLarge(f"body of {length} bytes exceeds the {limit}-byte limit")
    # No timer of its own: a deadline on the loop's shared timer (gateway.deadlines), which
    # a request whose body is already here (nearly all of them) adds and removes unseen.
    task = asyncio.current_task()
    assert task is not None  # an ASGI app always runs in a task
    loop = task.get_loop()
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        task.cancel()

    deadlines = on_loop(loop)
    deadlines.add(task, loop.time() + timeout, expire)
    try:
        return await _receive_all(receive, limit)
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None
        raise
    finally:
        deadlines.discard(task)


async def _receive_all(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_response(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def media_type(scope: Scope) -> bytes:
    """The Content-Type without parameters, lower-cased; read once per request."""
    kind: bytes | None = scope.get("gateway.media_type")
    if kind is None:
        value = header(scope, b"content-type")
        kind = scope["gateway.media_type"] = value.split(b";", 1)[0].strip().lower() if value else JSON
    return kind


def request_id(scope: Scope) -> str:
    """The request's id by the one rule every door follows (inference.request_id)."""
    return rule_request_id(header(scope, b"x-request-id"))


class RequestIdHeader:
    """Pure ASGI middleware: every answer carries X-Request-ID (health, metadata, 404s and
    405s too), the client's when it sent a usable one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = request_id(scope).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
