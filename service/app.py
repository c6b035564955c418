"""create_app(settings): the FastAPI application, its lifespan, error mapping and metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.manifest import ArtifactError
from service import admin, api, ops, schemas, v2, web
from service.errors import ServiceError, error_response, internal_error_response, json_error
from service.fastlane import FastLane
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.security import ApiKeyMiddleware
from service.settings import Settings

log = logging.getLogger("vaeserve.app")
ENDPOINTS = {"/encode", "/reconstruct", "/sample", "/interpolate", "/anomaly-score", "/healthz", "/readyz",
             "/metrics", "/model", "/admin/reload", "/"}
REJECTION_REASONS = {413: "too_large", 429: "queue_full", 503: "not_ready", 504: "timeout"}


LOAD_ERRORS = (ArtifactError, OSError, ValueError, KeyError, TypeError)


async def load_model(app: FastAPI) -> None:
    """Verify, load and warm the artifacts off the event loop, then start serving them."""
    try:
        await app.state.pipeline.load(app.state.settings.artifacts_dir)
    except LOAD_ERRORS as exc:
        app.state.load_error = str(exc)
        log.error("model not loaded, service not ready: %s", exc)
        return
    app.state.load_error = None
    app.state.metrics.ready.set(1)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Load in the background: the port opens at once, /healthz answers, /readyz says 503 until warm.
    loop = asyncio.get_running_loop()
    loading = loop.create_task(load_model(app))
    _reload_on_sighup(app, loop)
    yield
    if not loading.done():
        loading.cancel()
    app.state.metrics.ready.set(0)
    drained = await app.state.pipeline.shutdown()
    log.info("shutdown: queues %s", "drained" if drained else "not drained in time")


def _reload_on_sighup(app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
    """SIGHUP reloads the configured artifacts_dir (same checks as POST /admin/reload)."""
    async def reload() -> None:
        try:
            await app.state.pipeline.load(app.state.settings.artifacts_dir)
            app.state.load_error = None
            app.state.metrics.ready.set(1)
        except LOAD_ERRORS as exc:
            log.error("SIGHUP reload refused, old model keeps serving: %s", exc)

    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        log.debug("SIGHUP reload not available in this process")


def endpoint_label(path: str) -> str:
    """A bounded set of metric labels: known routes, v2 inference, or other."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v2/"):
        return "/v2/infer" if path.endswith("/infer") else "/v2"
    return "other"


class MetricsMiddleware:
    """Counts requests and times them per endpoint (pure ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.latency = {e: metrics.request_latency.labels(endpoint=e) for e in ENDPOINTS | {"other", "/v2", "/v2/infer"}}
        self.counters: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        endpoint = endpoint_label(scope["path"])
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.latency[endpoint].observe(time.perf_counter() - start)
            counter = self.counters.get((endpoint, status))
            if counter is None:
                counter = self.counters[(endpoint, status)] = self.metrics.requests.labels(endpoint=endpoint, status=str(status))
            counter.inc()
            if status in REJECTION_REASONS:
                self.metrics.rejections.labels(reason=REJECTION_REASONS[status]).inc()


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes {"error", "error_type"} with the right status, here and nowhere else."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return json_error(422, problems, "invalid_input")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return json_error(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "http_error"),
                          dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return internal_error_response()


def custom_openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the request models of routes that parse their own bodies."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (schemas.EncodeRequest, schemas.ReconstructRequest, schemas.SampleRequest,
                  schemas.InterpolateRequest, schemas.AnomalyScoreRequest):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings) -> FastAPI:
    """The application; the model loads in the lifespan, so /readyz is 503 until it is warm."""
    # FastAPI's OpenTelemetry hooks look up the global providers on every request (7% of a
    # single-item request's time, py-spy); the service reports through Prometheus instead.
    app = FastAPI(title="vaeserve", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Variational autoencoder serving: encode, reconstruct, sample, interpolate, anomaly scores.")
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pipeline = Pipeline(settings, metrics)
    app.state.load_error = None
    install_error_handlers(app)
    app.include_router(api.router)  # first: the hot routes are matched first
    app.include_router(ops.router)
    app.include_router(web.router)
    app.include_router(v2.router)
    app.include_router(admin.router)
    app.add_middleware(FastLane, handlers=api.HOT_HANDLERS)  # innermost: CORS, keys and metrics still apply
    if settings.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept"])
    app.add_middleware(ApiKeyMiddleware, api_keys=settings.accepted_api_keys(),
                       admin_api_keys=settings.admin_api_keys, protect_metrics=settings.metrics_require_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts refusals too
    app.openapi = lambda: custom_openapi(app)  # type: ignore[method-assign]
    return app
