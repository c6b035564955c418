"""create_app(settings): the FastAPI application, its lifespan, error mapping and metrics."""

from __future__ import annotations

import asyncio
import gc
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
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import admin, api, drift, models, ops, schemas, v2, web
from service.admission import AdmissionMiddleware
from service.errors import ClientDisconnected, ServiceError, error_response, internal_error_response, json_error
from service.fastlane import FastLane
from service.metrics import Metrics
from service.quotas import QuotaMiddleware, load_keys_and_quotas, reload_keys_and_quotas
from service.registry import LOAD_ERRORS, ModelRegistry
from service.requestlog import RequestContextMiddleware, configure_logging, current_request
from service.security import ApiKeyMiddleware
from service.settings import Settings
from service.tracing import make_tracer

log = logging.getLogger("vaeserve.app")
ENDPOINTS = {"/encode", "/reconstruct", "/sample", "/interpolate", "/anomaly-score", "/healthz", "/readyz",
             "/metrics", "/model", "/models", "/admin/reload", "/drift", "/"}
MODEL_OPERATIONS = {"/encode", "/reconstruct", "/sample", "/interpolate", "/anomaly-score"}
REJECTION_REASONS = {413: "too_large", 429: "queue_full", 503: "not_ready", 504: "timeout"}
# A request allocates a few hundred tracked objects (frames, dicts, futures); at CPython's default
# of 700 a young-generation collection ran every few requests and cost 16% of a single-item
# request's CPU (in-process A/B, 64 concurrent). Nothing here builds reference cycles in bulk.
GC_YOUNG_THRESHOLD = 20_000


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Load in the background: the port opens at once, /healthz answers, /readyz says 503 until warm.
    loop = asyncio.get_running_loop()
    gc.freeze()  # what import and app set-up allocated stays: no collection needs to scan it again
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    loading = loop.create_task(app.state.registry.start())
    _reload_on_sighup(app, loop)
    yield
    if not loading.done():
        loading.cancel()
    app.state.metrics.ready.set(0)
    drained = await app.state.registry.shutdown()
    log.info("shutdown: queues %s", "drained" if drained else "not drained in time")


def _reload_on_sighup(app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
    """SIGHUP rescans the model repository or reloads artifacts_dir (same checks as POST
    /admin/reload), and re-reads the API key file and the key quotas."""
    async def reload() -> None:
        reload_keys_and_quotas(app.state)
        try:
            await app.state.registry.reload()
        except LOAD_ERRORS as exc:
            log.error("SIGHUP reload refused, the loaded models keep serving: %s", exc)

    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        log.debug("SIGHUP reload not available in this process")


def endpoint_label(path: str) -> str:
    """A bounded set of metric labels: known routes, v2 inference, or other."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/models"):  # one label per operation, whichever model: bounded
        operation = "/" + path.rsplit("/", 1)[-1]
        return operation if operation in MODEL_OPERATIONS else "/models"
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
            if status == ClientDisconnected.status_code:
                self.metrics.client_disconnects.inc()
            elif status in REJECTION_REASONS:
                record = current_request()  # a 429 can be a key's quota rather than a full queue
                reason = record.rejection if record is not None and record.rejection else REJECTION_REASONS[status]
                self.metrics.rejections.labels(reason=reason).inc()


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

    @app.exception_handler(ClientDisconnect)  # a body FastAPI reads itself (pydantic body models)
    async def client_disconnect(request: Request, _: ClientDisconnect) -> Response:
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return error_response(ClientDisconnected("client disconnected"))

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


def create_app(settings: Settings, *, tracer_provider: Any = None) -> FastAPI:
    """The application; the model loads in the lifespan, so /readyz is 503 until it is warm.
    tracer_provider: an OpenTelemetry SDK provider to trace on (tests), instead of the OTLP exporter."""
    # FastAPI's OpenTelemetry hooks look up the global providers on every request (7% of a
    # single-item request's time, py-spy); the service reports through Prometheus instead.
    app = FastAPI(title="vaeserve", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Variational autoencoder serving: encode, reconstruct, sample, interpolate, anomaly scores.")
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = ModelRegistry(settings, metrics)
    app.state.keyring, app.state.quotas = load_keys_and_quotas(settings)  # ValueError: a bad quota file
    configure_logging(settings.access_log)
    tracer = make_tracer(settings, tracer_provider)
    app.state.drift = app.state.registry.drift  # GET /drift
    metrics.registry.register(app.state.drift)  # drift gauges, computed at scrape time
    install_error_handlers(app)
    app.include_router(api.router)  # first: the hot routes are matched first
    app.include_router(ops.router)
    app.include_router(models.router)
    app.include_router(web.router)
    app.include_router(v2.router)
    app.include_router(admin.router)
    app.include_router(drift.router)
    app.add_middleware(FastLane, handlers=api.HOT_HANDLERS)  # innermost: CORS, keys and metrics still apply
    if settings.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID", "traceparent"],
                           expose_headers=["X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                                           "RateLimit-Reset"])
    app.add_middleware(QuotaMiddleware, state=app.state, metrics=metrics)  # inside the key check: valid keys only
    # Before any body is read, after the key check (a flood without a key gets 401, not everyone's slots).
    app.add_middleware(AdmissionMiddleware, max_in_flight=settings.max_in_flight,
                       request_timeout_s=settings.request_timeout_s)
    app.add_middleware(ApiKeyMiddleware, keyring=app.state.keyring, protect_metrics=settings.metrics_require_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # counts refusals too
    # Outermost: the request ID, access log line and span cover everything inside, refusals included.
    app.add_middleware(RequestContextMiddleware, mode=settings.access_log, metrics=metrics, tracer=tracer)
    app.openapi = lambda: custom_openapi(app)  # type: ignore[method-assign]
    return app
