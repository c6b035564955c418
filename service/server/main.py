"""`vaeserve serve` and `python -m service`: one server process, or `workers` of them."""

from __future__ import annotations

from typing import Any

from service.server.uvicorn_server import configure, serve_one
from service.settings import Settings


def serve(overrides: dict[str, Any] | None = None) -> int:
    settings = Settings(**(overrides or {}))
    configure(settings)
    if settings.workers > 1:
        from service.server.workers import supervise

        return supervise(settings)
    return serve_one(settings)
