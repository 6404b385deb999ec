"""Admission control in front of decoding: a bound on inference requests in flight and on
the body bytes they hold, answered 503 with Retry-After at once, before a body is read.

The batcher's queue bounds rows waiting for the model; it only sees a request once its
body was read and decoded. Under a flood of connections that is too late: bodies pile up
in memory and every request waits on the event loop. Here a request is counted from its
first byte to its answer, and charged its declared Content-Length (or the body limit when
it declares none) while it holds it. The budget itself (gateway.admission) is shared
with the gRPC door.
"""

from __future__ import annotations

import functools

import orjson

from gateway.admission import Admission
from gateway.http.asgi import JSON, headers_of, request_id
from gateway.types import ASGIApp, Receive, Scope, Send

# Every path the hot-path router sends to an inference endpoint ends in one of these:
# /v1/.../predict and /explain, KServe V1's :predict and :explain, /v2/.../infer.
_INFERENCE_SUFFIXES = ("/predict", "/infer", "/explain", ":predict", ":explain")


_SHED_BODY = orjson.dumps({"error": "the server is at its limit of requests in flight; retry shortly"})


class AdmissionGate:
    """Pure ASGI middleware: inference requests over the bounds are answered 503 before
    their body is read; everything else (health, metrics, admin) passes untouched."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inference = scope["type"] == "http" and scope["method"] == "POST"
        if not inference or not scope["path"].endswith(_INFERENCE_SUFFIXES):
            await self.app(scope, receive, send)
            return
        get = headers_of(scope).get
        charged = self.admission.charge(get(b"content-length"))
        if charged is None:
            await _shed(scope, send)
            return
        ticket = [charged]
        if get(b"content-encoding") not in (None, b"identity"):
            # Held inflated: what it inflates to is charged as soon as it is known, before
            # it is decoded (503 then if that passes the bound).
            scope["gateway.hold"] = functools.partial(self.admission.grow, ticket)
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.release(ticket[0])


async def _shed(scope: Scope, send: Send) -> None:
    headers = [
        (b"content-type", JSON),
        (b"retry-after", b"1"),
        (b"content-length", str(len(_SHED_BODY)).encode()),
        (b"x-request-id", request_id(scope).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _SHED_BODY})
