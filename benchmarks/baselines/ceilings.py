"""The HTTP ceilings: the same server and JSON decoding as the gateway, no model.

`asgi_app` is a plain ASGI callable (what the gateway's inference endpoints are);
`starlette_app` is an ordinary Starlette endpoint with its Request object.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = orjson.dumps({"predictions": [{"label": 0, "probabilities": {"0": 0.5, "1": 0.5}}]})


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if body:
        orjson.loads(body)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(ANSWER)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


async def _noop(request: Request) -> Response:
    body = await request.body()
    if body:
        orjson.loads(body)
    return Response(ANSWER, media_type="application/json")


starlette_app = Starlette(routes=[Route("/predict", _noop, methods=["POST", "GET"]), Route("/health", _noop)])
