"""uvicorn's httptools protocol with the limits it lacks: request headers bounded in bytes
and in time, and a cap on open connections answered 503 with Retry-After.

uvicorn (0.54) arms no timer on a new connection and cancels its keep-alive timer at the
first byte of a request, so a client that connects and sends nothing, or trickles its
headers, holds a socket forever (with `nofile=1024`, ~1,100 such sockets lock everyone
out). httptools has no header size limit: one 128 MiB header kept the event loop busy for
14 s. Here the header phase of every request has a deadline and a byte budget, counted
only while the headers are incomplete, and connections beyond the cap are answered and
closed at once. A body must also finish arriving within the body timeout of its headers,
read or not: uvicorn keeps reading the rest of a body nobody reads (an early 413, /healthz)
to reach the next request, and each trickled byte put its keep-alive timer off again.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any

from uvicorn import Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.deadlines import on_loop

_CLOSE = b"connection: close\r\ncontent-type: application/json\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1024


# A draining connection closes once its socket has had nothing to read for this long.
DRAIN_QUIET_S = 0.05


def _unread(transport: asyncio.Transport) -> bool:
    """Whether the kernel holds bytes this connection has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peer:
            return bool(peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing to read (EAGAIN), or the peer is gone
        return False


def _response(status: bytes, message: bytes, extra: bytes = b"") -> bytes:
    body = b'{"error":"' + message + b'"}'
    return (
        b"HTTP/1.1 " + status + b"\r\n" + _CLOSE + extra
        + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


TOO_MANY = _response(
    b"503 Service Unavailable", b"too many open connections; retry shortly", b"retry-after: 1\r\n"
)
DRAINING = _response(
    b"503 Service Unavailable", b"the server is shutting down; retry (another replica answers)",
    b"retry-after: 1\r\n",
)  # fmt: skip
HEADERS_TOO_LARGE = _response(b"431 Request Header Fields Too Large", b"request headers are too large")
HEADERS_TOO_SLOW = _response(b"408 Request Timeout", b"request headers did not arrive in time")


class GatewayHttpProtocol(HttpToolsProtocol):
    """Header phase bounded; connections capped. Everything else is uvicorn's."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._in_headers = True
        self._header_bytes = 0
        self._header_started = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._headers_done = 0.0
        self._draining = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.turned_away = False  # made during the drain: its request is answered 503
        self._tail = b""  # the last bytes of a turned-away request's headers seen so far
        self._deadlines = on_loop(self.loop)
        self._writes: _JoinedWrites | None = None
        self._keepalive_armed = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = _JoinedWrites(transport, self.loop)
        if len(self.connections) > self._limits.max_connections:
            transport.write(TOO_MANY)
            transport.close()
            return
        self.turned_away = getattr(self.server_state, "gateway_turn_away", False)
        self._header_started = self.loop.time()
        _HeaderDeadlines.watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._in_headers = False
        self._cancel_body_timer()
        self._unset_keepalive_if_required()  # uvicorn does only when the peer closed cleanly
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The drain: uvicorn closes an idle connection at once, resetting it over requests
        the client already sent (in the socket's buffer, or read and queued behind the one
        in progress). Here a connection is closed only once nothing it sent is unanswered:
        every request received is answered, then it closes when its socket is quiet."""
        self._draining = True
        if self._idle():
            self._close_when_quiet()

    def _idle(self) -> bool:
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _close_when_quiet(self) -> None:
        if self._drain_timer is None:
            self._drain_timer = self.loop.call_later(DRAIN_QUIET_S, self._close_if_quiet)

    def _close_if_quiet(self) -> None:
        self._drain_timer = None
        if self.transport.is_closing() or not self._idle():
            return  # a request came: its answer arms the next check
        if _unread(self.transport):
            self._close_when_quiet()  # read on the loop's next turn, then answered
            return
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.turned_away:
            self._turn_away(data)
            return
        super().data_received(data)
        # Counted after parsing, and only if the headers are still incomplete: a chunk
        # that completes them (and carries body bytes after them) is never refused.
        if self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self._limits.max_header_bytes and not self.transport.is_closing():
                self._refuse(HEADERS_TOO_LARGE)

    def _turn_away(self, data: bytes) -> None:
        """A connection made during the drain: once its request's headers are in (never
        parsed: nothing of it reaches the app), 503 + Retry-After and close. Its body, if
        any, is not waited for; small ones came with the headers."""
        self._header_bytes += len(data)
        seen = self._tail + data
        self._tail = seen[-3:]
        ended = b"\r\n\r\n" in seen or self._header_bytes > self._limits.max_header_bytes
        if ended and not self.transport.is_closing():
            self._refuse(DRAINING)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._header_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._headers_done = self.loop.time()
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = self._writes  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._cancel_body_timer()
        super().on_message_complete()

    def _unset_keepalive_if_required(self) -> None:
        if self._keepalive_armed:
            self._keepalive_armed = False
            self._deadlines.discard(self)

    def on_response_complete(self) -> None:
        # uvicorn's, except that its keep-alive timer (a libuv timer armed after every
        # response and cancelled at the next request's first byte) is an entry in the
        # loop's shared deadlines (gateway.deadlines): same expiry, no timer per request.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._keepalive_armed = True
            self._deadlines.add(
                self, self.loop.time() + self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        if self._draining and self._idle() and not self.transport.is_closing():
            self._unset_keepalive_if_required()  # closed when quiet, not after keep-alive
            self._close_when_quiet()
        # Answered before its body arrived: the rest has what is left of the body timeout
        # (no timer otherwise: this is the rare case, not every request's cost).
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            left = self._limits.body_timeout_s - (self.loop.time() - self._headers_done)
            self._cancel_body_timer()
            self._body_timer = self.loop.call_later(max(left, 0.0), self._body_too_slow)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing():  # the answer went out; nobody reads the rest
            self.transport.close()

    def _headers_too_slow(self) -> None:
        if self._in_headers and not self.transport.is_closing():
            # An idle keep-alive connection is uvicorn's to close; one that began a request
            # (or never sent a byte) and has not finished its headers is ours.
            self._refuse(HEADERS_TOO_SLOW if self._header_bytes else b"")

    def _refuse(self, response: bytes) -> None:
        self._in_headers = False
        if response:
            self.transport.write(response)
        self.transport.close()


async def drain(server: Server, sockets: list[socket.socket] | None) -> None:
    """uvicorn's shutdown, but its listening sockets stay open until the drain ends: a
    connection made meanwhile is answered 503 + Retry-After + close (a load balancer
    retries elsewhere) where a closed socket refuses it at TCP level. The drain ends when
    the connections made before it have answered what they received (or at the graceful
    timeout: then the requests still running are cancelled), then the sockets close."""
    state = server.server_state
    state.gateway_turn_away = True  # type: ignore[attr-defined]
    for connection in list(state.connections):
        connection.shutdown()
    try:
        await asyncio.wait_for(_drained(server), timeout=server.config.timeout_graceful_shutdown)
    except TimeoutError:
        for task in state.tasks:
            task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
    for listening in server.servers:
        listening.close()
    for sock in sockets or []:
        sock.close()
    for connection in list(state.connections):
        connection.shutdown()  # the turned-away ones, that sent no request yet
    for listening in server.servers:
        await listening.wait_closed()
    if not server.force_exit:
        await server.lifespan.shutdown()


async def _drained(server: Server) -> None:
    state = server.server_state
    while not server.force_exit and (
        state.tasks or any(not getattr(c, "turned_away", False) for c in state.connections)
    ):
        await asyncio.sleep(0.02)


class _JoinedWrites:
    """The transport a response cycle writes to. uvicorn writes a response's head and its
    body in two writes: two send() calls and two TCP segments for an answer of a few hundred
    bytes, where one send() over loopback costs more in the kernel than decoding the request.
    Here a head is held until the body that follows it in the same step of the loop (every
    whole-body answer does), and both leave in one send(); a head with nothing behind it yet
    (a stream, a HEAD answer) leaves at the loop's next turn. Order is kept: a write sends
    what is held before its own bytes, and a close sends it before closing."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):  # 100 Continue: now
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class _HeaderDeadlines:
    """The header deadline of every connection of a server, checked by one timer for the
    server rather than one per request: uvloop's call_later + cancel costs about 1-7 us (a
    libuv timer made and torn down), paid by every request on a path where the gateway's
    own work is ~26 us. A request's headers are cut off between the timeout and the timeout
    plus a quarter of it (at most a second later)."""

    @staticmethod
    def watch(protocol: GatewayHttpProtocol) -> None:
        state = protocol.server_state
        if not getattr(state, "gateway_header_sweep", False):
            state.gateway_header_sweep = True  # type: ignore[attr-defined]
            interval = min(1.0, protocol._limits.header_timeout_s / 4)
            protocol.loop.call_later(interval, _HeaderDeadlines.sweep, protocol.loop, state, interval)

    @staticmethod
    def sweep(loop: asyncio.AbstractEventLoop, state: Any, interval: float) -> None:
        now = loop.time()
        for connection in list(state.connections):
            if (
                isinstance(connection, GatewayHttpProtocol) and connection._in_headers
                and now - connection._header_started > connection._limits.header_timeout_s
            ):  # fmt: skip
                connection._headers_too_slow()
        if state.connections:
            loop.call_later(interval, _HeaderDeadlines.sweep, loop, state, interval)
        else:  # nothing to watch: the next connection starts it again (and a loop can end)
            state.gateway_header_sweep = False
