"""Operational routes: liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.core.errors import ModelNotReady
from service.http.schemas import ErrorResponse, HealthResponse

router = APIRouter()


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", response_model=HealthResponse, summary="Readiness: artifacts verified and graphs warm",
            responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> Any:
    registry = request.app.state.registry
    if registry.ready:
        return {"status": "ready"}
    raise ModelNotReady(f"not ready: {registry.not_ready_reason()}", retry_after_s=1)


@router.get("/metrics", summary="Prometheus exposition", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
