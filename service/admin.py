"""Model management: hot reload of a new artifact version (protected by admin keys)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from service.deps import PipelineDep, read_request, validate_options
from service.errors import Conflict
from service.schemas import ErrorResponse, Options

router = APIRouter(prefix="/admin", tags=["admin"])
log = logging.getLogger("vaeserve.admin")


class ReloadRequest(Options):
    artifacts_dir: str | None = Field(None, description="folder to load (default: the configured artifacts_dir)")


async def reload_model(request: Request, artifacts_dir: Path) -> dict[str, Any]:
    """Load, verify and warm artifacts beside the serving model, then switch; refuse broken ones."""
    from service.app import LOAD_ERRORS  # one list of load failures, shared with start-up

    pipeline = request.app.state.pipeline
    previous = pipeline.handle.ref if pipeline.handle else None
    try:
        handle = await pipeline.load(artifacts_dir)
    except LOAD_ERRORS as exc:
        log.error("reload refused, still serving %s: %s", previous, exc)
        raise Conflict(f"reload refused ({exc}); still serving {previous}") from None
    request.app.state.load_error = None
    request.app.state.metrics.ready.set(1)
    return {"model": handle.ref, "previous": previous, "artifacts_dir": str(artifacts_dir)}


@router.post("/reload", summary="Load a new artifact version beside the old one, warm it, switch atomically",
             responses={409: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
async def reload(request: Request, pipeline: PipelineDep) -> dict[str, Any]:
    settings = request.app.state.settings
    body = await read_request(request, settings) if request.headers.get("content-length", "0") != "0" else {}
    options = validate_options(ReloadRequest, body)
    return await reload_model(request, Path(options.artifacts_dir) if options.artifacts_dir else settings.artifacts_dir)
