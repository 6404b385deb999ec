"""Wiring only: routes, exception handlers and the lifespan. No logic lives here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway import __version__
from gateway.openapi import build_openapi, docs_page
from gateway.registry import ModelRegistry, RuntimeFactory, ort_runtime
from gateway.repository import Repository
from gateway.routes import Endpoints, InferV2Endpoint, Outcome, PredictEndpoint, json_response
from gateway.settings import Settings

access_log = logging.getLogger("gateway.access")
lifecycle_log = logging.getLogger("gateway.lifecycle")


def log_outcome(outcome: Outcome) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            extra={
                "event": "request",
                "request_id": outcome.request_id,
                "route": outcome.route,
                "model": outcome.model,
                "version": outcome.version,
                "status": outcome.status,
                "latency_ms": round(outcome.seconds * 1000, 3),
                "rows": outcome.rows,
                **({"error": outcome.error} if outcome.error else {}),
            },
        )


def create_app(settings: Settings, runtime_factory: RuntimeFactory = ort_runtime) -> Starlette:
    registry = ModelRegistry(settings, Repository(settings.repo), runtime_factory)
    endpoints = Endpoints(settings, registry)
    predict = PredictEndpoint(settings, registry, log_outcome)
    infer = InferV2Endpoint(settings, registry, log_outcome)

    async def openapi(request: Request) -> Response:
        return json_response(build_openapi(_live_models(registry), __version__))

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page(build_openapi(_live_models(registry), __version__)))

    routes = [
        Route("/v1/models/{name}/predict", predict),
        Route("/v1/models/{name}/versions/{version}/predict", predict),
        Route("/v2/models/{name}/infer", infer),
        Route("/v2/models/{name}/versions/{version}/infer", infer),
        Route("/v2", endpoints.server_metadata),
        Route("/v2/health/live", endpoints.healthz),
        Route("/v2/health/ready", endpoints.readyz),
        Route("/v2/models/{name}", endpoints.model_metadata),
        Route("/v2/models/{name}/versions/{version}", endpoints.model_metadata),
        Route("/v2/models/{name}/ready", endpoints.model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", endpoints.model_ready),
        Route("/v2/models/{name}/stats", endpoints.model_stats),
        Route("/v2/models/{name}/versions/{version}/stats", endpoints.model_stats),
        Route("/healthz", endpoints.healthz),
        Route("/readyz", endpoints.readyz),
        Route("/openapi.json", openapi),
        Route("/docs", docs),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await registry.load_repository()
        lifecycle_log.info(
            "serving", extra={"event": "startup", "models": registry.live, "failures": registry.failures}
        )
        yield
        # The server has stopped accepting and finished its open requests; drain the rest.
        lifecycle_log.info("draining", extra={"event": "shutdown"})
        await registry.close()
        lifecycle_log.info("shutdown complete", extra={"event": "shutdown_complete"})

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: endpoints.not_found, 405: endpoints.method_not_allowed},
    )
    app.state.registry = registry
    return app


def _live_models(registry: ModelRegistry) -> list:  # type: ignore[type-arg]
    live = registry.live
    return [m for m in registry.loaded() if live.get(m.name) == m.version]
