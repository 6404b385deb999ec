"""The admission budget at the gRPC door: every message read against the arrival timeout
and the byte budget, every inference message counted in the budget HTTP shares.

grpc.aio reads a unary call's message before the handler runs, with no timeout and at
any size up to the limit: 40 calls each stopping 1 KiB short of 16 MiB held 640 MB for
as long as their clients liked. Here each unary handler becomes a streaming-request one
that reads its single message itself, so the read is ours to time and to charge:
- a read is charged the largest message from the moment it is pending (grpc core then
  buffers up to that much for it) until it completes, when the message is charged what
  it is; a call finding no room within `QUEUE_S` is refused RESOURCE_EXHAUSTED before any
  of its message beyond the stream's window has come. The charge is pessimistic: grpc
  hands Python a message only once it is whole, never the length its 5-byte prefix
  declares, so a stream waiting for its next message holds the largest message of the
  byte budget (not a concurrency slot) until it comes or the body timeout ends it;
- a read not done within the body timeout ends the call (DEADLINE_EXCEEDED);
- an inference message is counted in flight, as an HTTP request is, from its arrival to
  its answer. A stream is counted only while one of its messages is being answered, so
  idle streams hold no slot; a stream waiting longer than the body timeout is ended.

At SIGTERM the service sends itself a marker call (`MARKER`): grpc hands calls to Python
in the order they arrived, so the calls before the marker are answered and those after it
refused UNAVAILABLE, and grpc's own stop (which cancels what is still reading) waits until
no call is in the gateway's hands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from gateway.admission import Admission

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]

INFERENCE_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
# How long a call waits for room in the byte budget before it is refused: reads of small
# messages already buffered (the common case) give their charge back within a loop turn
# or two, so a burst of calls queues rather than fails (measured: 512 calls at once, room
# for two reads, none refused for bytes); a budget held by slow senders refuses after this.
QUEUE_S = 0.1
RETRY: tuple[tuple[str, str], ...] = (("retry-after", "1"), ("grpc-retry-pushback-ms", "1000"))
FULL = (
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    "the server is at its limit of message bytes in flight; retry shortly",
)
MARKER = "x-gateway-drain-marker"
QUIET_S = 0.1


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission, max_message: int, arrival_s: float) -> None:
        self.admission = admission
        self.max_message = max_message
        self.arrival_s = arrival_s
        self.marker = secrets.token_hex(16)  # a drain marker only this process can send
        self.draining = False
        self.calls = 0  # calls in the gateway's hands: reading their message or answering
        self.refused_at = 0.0
        self._freed = asyncio.Event()  # set (and replaced) whenever a read gives its charge back

    @functools.cached_property
    def _refuse(self) -> Handler:
        """UNAVAILABLE for any method, unary or streaming (on the wire alike), once the
        message has arrived: a client still sending when the answer comes sees its call
        reset (CANCELLED), not the answer."""

        async def refuse(_: Any, context: Context) -> None:
            message = "the server is shutting down; retry (another replica answers)"
            await self.read(context, (grpc.StatusCode.UNAVAILABLE, message))
            await context.abort(grpc.StatusCode.UNAVAILABLE, message, RETRY)

        return grpc.stream_unary_rpc_method_handler(refuse)

    async def settled(self, deadline: float) -> None:
        """Until no call is in the gateway's hands and none has come for `QUIET_S`, or
        `deadline` (monotonic) passes. grpc's stop cancels the calls it holds that Python
        has not taken yet (CANCELLED, not UNAVAILABLE): clients still opening calls
        until they hear of the drain are refused here first."""
        while time.monotonic() < deadline and (self.calls or time.monotonic() - self.refused_at < QUIET_S):
            await asyncio.sleep(0.01)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        if self.draining:
            self.refused_at = time.monotonic()
            return self._refuse
        if (MARKER, self.marker) in (details.invocation_metadata or ()):
            # grpc hands calls over in the order they came: all before this one came
            # before SIGTERM and are answered, all after it are refused.
            self.draining = True
        handler = await continuation(details)
        if handler is None:
            return handler
        counted = details.method.rpartition("/")[2] in INFERENCE_METHODS
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.unary_unary, counted),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, counted),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Any, counted: bool) -> Callable[[Any, Context], Awaitable[Any]]:
        async def unary(_: Any, context: Context) -> Any:
            self.calls += 1
            try:
                return await answer(context)
            finally:
                self.calls -= 1

        async def answer(context: Context) -> Any:
            message = await self.read(context)
            if message is grpc.aio.EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")
            if not counted:
                return await behavior(message, context)
            size = await self._admit(message, context)
            try:
                return await behavior(message, context)
            finally:
                self.admission.release(size)

        return unary

    def _streaming(self, behavior: Any, counted: bool) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def messages(context: Context) -> AsyncIterator[Any]:
            while (message := await self.read(context)) is not grpc.aio.EOF:
                size = await self._admit(message, context) if counted else None
                try:
                    yield message
                finally:  # the handler asks for the next message once it answered this one
                    if size is not None:
                        self.admission.release(size)

        async def streaming(_: Any, context: Context) -> AsyncIterator[Any]:
            self.calls += 1
            try:
                async for response in behavior(messages(context), context):
                    yield response
            finally:
                self.calls -= 1

        return streaming

    async def read(self, context: Context, full: tuple[grpc.StatusCode, str] = FULL) -> Any:
        """The next message (or grpc.aio.EOF), within the arrival timeout and the budget;
        the call is refused `full` when the budget has no room for it."""
        if not await self._reserve():
            await context.abort(*full, RETRY)
        read = asyncio.ensure_future(context.read())
        try:
            done, _ = await asyncio.wait((read,), timeout=self.arrival_s)
            if done:
                return read.result()
        finally:
            read.cancel()  # a no-op once it is done; the call ends when it is not
            self.admission.unhold(self.max_message)
            self._freed.set()
            self._freed = asyncio.Event()
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the request message did not arrive within {self.arrival_s:g} s (--body-timeout-s)",
        )

    async def _reserve(self) -> bool:
        """Charge the largest message before its read is pending (grpc core buffers the
        message from then on), waiting up to `QUEUE_S` for room; False, nothing charged,
        when none came. A call waiting has no read pending, so it holds at most its window."""
        deadline = time.monotonic() + QUEUE_S
        while not self.admission.fits(self.max_message) and (left := deadline - time.monotonic()) > 0:
            # Woken when a read gives its charge back; HTTP's releases are seen within 10 ms.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), min(left, 0.01))
        return self.admission.hold(self.max_message)

    async def _admit(self, message: Any, context: Context) -> int:
        size = self.admission.admit(len(message) if isinstance(message, bytes) else message.ByteSize())
        if size is None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "the server is at its limit of requests in flight; retry shortly", RETRY,
            )  # fmt: skip
        return size or 0
