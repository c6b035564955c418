"""create_app(settings): the FastAPI application, its lifespan, its routes and its request edge."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware

from model.table_schema import MISSING_LEVEL
from service.core.bookkeeping import Bookkeeping
from service.core.inputs import InputSpec
from service.core.metrics import Metrics
from service.core.registry import LOAD_ERRORS, ModelRegistry
from service.http import schemas
from service.http.admission import Admission, InFlight
from service.http.errors import install_error_handlers
from service.http.middleware.edge import RequestEdge
from service.http.middleware.fastlane import FastLane
from service.http.quotas import QuotaGate, load_keys_and_quotas, reload_keys_and_quotas
from service.http.requests import configure_logging
from service.http.routes import admin, cards, drift, feedback, health, inference, jobs, models, thresholds, v2, web
from service.http.tracing import make_tracer
from service.settings import Settings

log = logging.getLogger("vaeserve.app")
# The route table: the hot routes first (matched first), then the rest.
ROUTERS = (inference.router, health.router, cards.router, models.router, web.router, v2.router, admin.router, drift.router,
           feedback.router, thresholds.router, jobs.router)
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
    await app.state.bookkeeping.start()  # the store, threshold policies, the job runner
    yield
    await app.state.bookkeeping.stop()  # running jobs go back to the queue for the next start
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
    handle = app.state.registry.handle
    if handle is None:  # not loaded yet: the examples cannot show the model's items; ask again later
        return schema
    item = example_item(handle.spec)
    for name in ("EncodeRequest", "ReconstructRequest", "AnomalyScoreRequest"):
        components[name]["examples"] = [{**example, "inputs": [item]} for example in components[name].get("examples", [{}])]
    app.openapi_schema = schema
    return schema


def example_item(spec: InputSpec) -> Any:
    """One item of the default model for the documentation's examples: a table's record (column means, the
    most frequent levels), or zeros of the model's size."""
    if spec.table is not None:
        return {c.name: round(c.mean, 3) if c.kind == "numeric" else next(
            (level for level in c.levels if level != MISSING_LEVEL), None) for c in spec.table.columns}
    return [0.0] * spec.features


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
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(FastLane, handlers=inference.HOT_HANDLERS)  # innermost: CORS and the edge still apply
    if settings.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID", "traceparent"],
                           expose_headers=["X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                                           "RateLimit-Reset"])
    in_flight = app.state.in_flight = InFlight(metrics)
    # Jobs run when online requests leave room (service/core/jobs/runner.py).
    app.state.bookkeeping = Bookkeeping(settings, app.state.registry, quiet_s=in_flight.quiet_s)
    # Outermost: the request ID, access log line, metrics and span cover everything inside, refusals included.
    app.state.quota_gate = QuotaGate(state=app.state, metrics=metrics)
    app.add_middleware(RequestEdge, keyring=app.state.keyring, quotas=app.state.quota_gate,
                       admission=Admission(in_flight, max_in_flight=settings.max_in_flight,
                                           request_timeout_s=settings.request_timeout_s),
                       in_flight=in_flight, metrics=metrics, protect_metrics=settings.metrics_require_key,
                       access_log=settings.access_log, tracer=tracer)
    app.openapi = lambda: custom_openapi(app)  # type: ignore[method-assign]
    return app
