"""Model management: hot reload and repository rescans (protected by admin keys)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from service.core.errors import Conflict, InvalidInput
from service.core.registry import LOAD_ERRORS
from service.http.body import read_request, validate_options
from service.http.deps import RegistryDep
from service.http.routes.models import describe
from service.http.schemas import ErrorResponse, Options

router = APIRouter(prefix="/admin", tags=["admin"])
log = logging.getLogger("vaeserve.admin")


class ReloadRequest(Options):
    artifacts_dir: str | None = Field(None, description="folder to load (default: the configured artifacts_dir; not with a model repository)")


@router.post("/reload", summary="Rescan the model repository, or load a new artifacts folder beside the old one; "
                                "new versions are verified and warmed before they take traffic",
             responses={409: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
async def reload(request: Request, registry: RegistryDep) -> dict[str, Any]:
    settings = request.app.state.settings
    body = await read_request(request, settings) if request.headers.get("content-length", "0") != "0" else {}
    options = validate_options(ReloadRequest, body)
    previous = registry.handle.ref if registry.handle else None
    if options.artifacts_dir and settings.model_repository is not None:
        raise InvalidInput("artifacts_dir: the service serves a model repository, which is rescanned as a whole; "
                           "drop a new version folder into it and reload without a body")
    try:
        loaded = await registry.reload(Path(options.artifacts_dir) if options.artifacts_dir else None)
    except LOAD_ERRORS as exc:
        log.error("reload refused, still serving %s: %s", previous, exc)
        raise Conflict(f"reload refused ({exc}); still serving {previous}") from None
    result = describe(registry) if loaded is None else {"model": loaded}
    return {**result, "previous": previous,
            "artifacts_dir": options.artifacts_dir or str(settings.model_repository or settings.artifacts_dir)}
