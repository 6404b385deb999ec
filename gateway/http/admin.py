"""The admin API: promote, roll back, load and unload model versions while serving.

Off unless a token is configured (GATEWAY_ADMIN_TOKEN); every call needs exactly one
`Authorization: Bearer <token>`, checked by the V2 service's `authorize` as gRPC's are.
With --admin-port, these routes answer only on that port. Changes are written to
serving.json, the source of truth that every worker (and every restart) follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.artifacts.repository import RepositoryError, is_valid_name, is_valid_version
from gateway.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unprocessable,
    public_reason,
    validation_detail,
)
from gateway.http.endpoints import json_response
from gateway.lifecycle.registry import LOAD_ERRORS, ModelRegistry
from gateway.settings import Settings
from gateway.v2.service import V2Service, authorize

Handler = Callable[[Request], Awaitable[Response]]


class VersionBody(msgspec.Struct, forbid_unknown_fields=True):
    version: str


class IndexBody(msgspec.Struct, forbid_unknown_fields=True):
    ready: bool = False  # only the versions that are loaded and ready


class CanaryBody(msgspec.Struct, forbid_unknown_fields=True):
    weight: Annotated[float, msgspec.Meta(ge=0, le=100)]  # percent of requests; 0 ends the canary
    version: str | None = None


class ShadowBody(msgspec.Struct, forbid_unknown_fields=True):
    version: str | None  # null ends the shadow


_version_body = msgspec.json.Decoder(VersionBody)
_shadow_body = msgspec.json.Decoder(ShadowBody)
_canary_body = msgspec.json.Decoder(CanaryBody)
_index_body = msgspec.json.Decoder(IndexBody)


class Admin:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.repository = registry.repository
        self.v2 = V2Service(settings, registry)

    def _on_admin_port(self, request: Request) -> bool:
        port = self.settings.admin_port
        return port is not None and bool(request.scope["server"][1] == port)

    def _authorize(self, request: Request) -> None:
        off_here = self.settings.admin_port is not None and not self._on_admin_port(request)
        if self.settings.admin_token is None or off_here:
            raise NotFound(f"no route for {request.method} {request.url.path}")
        self._authorize_repository(request)

    def _authorize_repository(self, request: Request) -> None:
        """The V2 service's check, as gRPC's: Triton's clients call these unprompted, so an
        API that is off says why (403), not just "no route"."""
        values = request.headers.getlist("authorization")
        authorize(self.settings, values, "Authorization", on_admin_port=self._on_admin_port(request))

    def guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            self._authorize(request)
            return await handler(request)

        return endpoint

    @staticmethod
    def _name(request: Request) -> str:
        name: str = request.path_params["name"]
        if not is_valid_name(name):
            raise NotFound(f"no model {name!r}")
        return name

    async def _version(self, request: Request, name: str, given: str | None = None) -> str:
        if given is not None:
            version = given
        else:
            try:
                version = _version_body.decode(await request.body()).version
            except msgspec.ValidationError as exc:
                raise Unprocessable('body must be {"version": "<v>"}', validation_detail(str(exc))) from None
            except msgspec.DecodeError as exc:
                raise BadRequest(f"malformed body: {exc}") from None
        if not is_valid_version(version):
            raise NotFound(f"invalid version {version!r}")
        if version not in self.repository.versions(name):
            await asyncio.to_thread(self.repository.refresh)  # a remote may have it by now
        if version not in self.repository.versions(name):
            raise NotFound(f"model {name!r} has no version {version!r} in the repository")
        return version

    async def _switch(self, name: str, version: str, persist: Callable[[], object]) -> Response:
        live, previous = await self.v2.switch(name, version, "admin", persist)
        return json_response({"model": name, "version": live, "previous": previous})

    async def promote(self, request: Request) -> Response:
        name = self._name(request)
        version = await self._version(request, name)
        return await self._switch(name, version, lambda: self.repository.set_live(name, version))

    async def canary(self, request: Request) -> Response:
        """Send `weight` % of requests to `version` beside the live one; weight 0 ends it."""
        name = self._name(request)
        try:
            body = _canary_body.decode(await request.body())
        except msgspec.ValidationError as exc:
            raise Unprocessable(
                'body must be {"version": "<v>", "weight": <percent 0-100>}', validation_detail(str(exc))
            ) from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed body: {exc}") from None
        version = None
        if body.weight > 0:
            if body.version is None:
                raise Unprocessable("a canary with a weight above 0 needs a version")
            version = await self._version(request, name, body.version)
            if version == self.registry.live.get(name):
                raise Conflict(f"{name}:{version} is already live; a canary needs another version")
        if name not in self.registry.live:
            raise NotFound(f"no model {name!r} is served")
        try:
            persist = lambda: self.repository.set_canary(name, version, body.weight)  # noqa: E731
            await self.registry.set_canary(name, version, body.weight, persist, "admin")
        except LOAD_ERRORS as exc:
            raise Unprocessable(
                f"{name}:{version} did not load as a canary: {public_reason(exc)}; routing is unchanged"
            ) from None
        live = self.registry.live.get(name)
        return json_response({"model": name, "live": live, "canary": self._canary(name)})

    async def shadow(self, request: Request) -> Response:
        """Mirror live requests to `version` off the hot path; null ends the shadow."""
        name = self._name(request)
        try:
            given = _shadow_body.decode(await request.body()).version
        except msgspec.ValidationError as exc:
            message = 'body must be {"version": "<v>"}, or {"version": null} to end the shadow'
            raise Unprocessable(message, validation_detail(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed body: {exc}") from None
        version = await self._version(request, name, given) if given is not None else None
        if version is not None and version == self.registry.live.get(name):
            raise Conflict(f"{name}:{version} is already live; a shadow needs another version")
        if name not in self.registry.live:
            raise NotFound(f"no model {name!r} is served")
        try:
            persist = lambda: self.repository.set_shadow(name, version)  # noqa: E731
            await self.registry.set_shadow(name, version, persist, "admin")
        except LOAD_ERRORS as exc:
            raise Unprocessable(f"{name}:{version} did not load as a shadow: {public_reason(exc)}") from None
        return json_response({"model": name, "live": self.registry.live.get(name), "shadow": version})

    async def model(self, request: Request) -> Response:
        """One model: what serves, its canary, and its shadow's agreement with the live version."""
        name = self._name(request)
        if name not in self.registry.live and name not in self.repository.models():
            raise NotFound(f"no model {name!r}")
        shadow = self.registry.shadows.get(name)
        return json_response({
            "name": name, "live": self.registry.live.get(name), "canary": self._canary(name),
            "shadow": shadow.report() if shadow is not None else None,
            "loaded": [m.version for m in self.registry.loaded() if m.name == name],
        })  # fmt: skip

    def _canary(self, name: str) -> dict[str, Any] | None:
        canary = self.registry.canaries.get(name)
        return {"version": canary.version, "weight": canary.weight} if canary is not None else None

    async def rollback(self, request: Request) -> Response:
        """With a canary, end it (the live version stays); otherwise the previous version
        goes live again."""
        name = self._name(request)
        state = self.repository.serving(name) if name in self.repository.models() else None
        if state is not None and state.canary is not None:
            ended = state.canary.version
            await self.registry.set_canary(name, None, 0.0, lambda: self.repository.rollback(name), "admin")
            return json_response(
                {"model": name, "version": state.live, "previous": state.previous, "canary_ended": ended}
            )
        if state is None or state.previous is None:
            raise Conflict(f"model {name!r} has no previous version to roll back to")
        return await self._switch(name, state.previous, lambda: self.repository.rollback(name))

    async def load(self, request: Request) -> Response:
        name = self._name(request)
        version = await self._version(request, name)
        try:
            await self.registry.load_pinned(name, version)
        except LOAD_ERRORS as exc:
            raise Unprocessable(f"{name}:{version} did not load: {public_reason(exc)}") from None
        return json_response({"model": name, "version": version, "loaded": True})

    async def unload(self, request: Request) -> Response:
        name = self._name(request)
        version = await self._version(request, name)
        if self.registry.live.get(name) == version:
            raise Conflict(f"{name}:{version} is live; promote another version first")
        if self._canary(name) is not None and self.registry.canaries[name].version == version:
            raise Conflict(f"{name}:{version} is the canary; end it first (weight 0 or rollback)")
        shadow = self.registry.shadows.get(name)
        if shadow is not None and shadow.version == version:
            raise Conflict(f"{name}:{version} is the shadow; end it first")
        await self.registry.unload(name, version)
        return json_response({"model": name, "version": version, "loaded": False})

    async def models(self, request: Request) -> Response:
        out: list[dict[str, Any]] = []
        live = self.registry.live
        for name in sorted(set(self.repository.models()) | set(live)):
            try:
                state = self.repository.serving(name)
                versions = self.repository.versions(name)
            except RepositoryError as exc:
                state, versions = None, [f"unreadable: {public_reason(exc)}"]
            loaded = [
                {"version": m.version, "ready": m.ready, "provider": m.runtime.provider,
                 "queued_rows": m.batcher.queued_rows, "pinned": self.registry.is_pinned(name, m.version)}
                for m in self.registry.loaded() if m.name == name
            ]  # fmt: skip
            out.append({
                "name": name, "live": live.get(name), "previous": state.previous if state else None,
                "versions": versions, "loaded": loaded, "failure": self.registry.failures.get(name),
                "canary": self._canary(name),
                "shadow": s.version if (s := self.registry.shadows.get(name)) is not None else None,
            })  # fmt: skip
        return json_response({"models": out})

    # Triton's model repository extension, for clients that already speak it: the V2
    # service's operations, which gRPC calls too.

    async def repository_index(self, request: Request) -> Response:
        self._authorize_repository(request)
        body = await request.body()
        try:
            ready = _index_body.decode(body).ready if body.strip() else False
        except msgspec.ValidationError as exc:
            raise Unprocessable('body must be {"ready": <bool>}', validation_detail(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed body: {exc}") from None
        return json_response(self.v2.repository_index(ready))

    async def repository_load(self, request: Request) -> Response:
        self._authorize_repository(request)
        await self.v2.repository_load(request.path_params["name"], "admin")
        return json_response({})

    async def repository_unload(self, request: Request) -> Response:
        self._authorize_repository(request)
        await self.v2.repository_unload(request.path_params["name"])
        return json_response({})

    def routes(self) -> list[Route]:
        g = self.guarded
        return [
            Route("/admin/models", g(self.models), methods=["GET"]),
            Route("/admin/models/{name}/promote", g(self.promote), methods=["POST"]),
            Route("/admin/models/{name}/rollback", g(self.rollback), methods=["POST"]),
            Route("/admin/models/{name}/canary", g(self.canary), methods=["POST"]),
            Route("/admin/models/{name}/shadow", g(self.shadow), methods=["POST"]),
            Route("/admin/models/{name}", g(self.model), methods=["GET"]),
            Route("/admin/models/{name}/load", g(self.load), methods=["POST"]),
            Route("/admin/models/{name}/unload", g(self.unload), methods=["POST"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.repository_load, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", self.repository_unload, methods=["POST"]),
        ]
