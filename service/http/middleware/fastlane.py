"""The hot routes' fast lane: POSTs to the model endpoints go straight to their handlers.

FastAPI's router, dependency solver, exception middleware and response wrapper measured about half
of the server's time for a single-item /anomaly-score request (py-spy, 64 connections). This pure
ASGI middleware sits inside the metrics, API-key and CORS middleware, so those still apply, and
calls the *same* handler functions the FastAPI routes declare (which stay registered: they document
the API and answer the other methods with 405). Errors map through the same function as the app's
exception handlers, so a request gets the same answer whichever way it went.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.errors import ServiceError
from service.http.errors import error_response, internal_error_response

log = logging.getLogger("vaeserve.fastlane")
Handler = Callable[[Request], Awaitable[Response]]


class FastLane:
    """Dispatch `POST <path>` to handlers[path]; everything else goes on to the app."""

    def __init__(self, app: ASGIApp, *, handlers: Mapping[str, Handler]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            handler = self.handlers.get(path) or (self._model_route(scope, path) if path.startswith("/models/") else None)
        if handler is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await handler(Request(scope, receive))
        except ServiceError as exc:
            await error_response(exc)(scope, receive, send)  # its own ASGI call: a 413 lingers before closing
            return
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            response = internal_error_response()
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    def _model_route(self, scope: Scope, path: str) -> Handler | None:
        """/models/{name}/{op} and /models/{name}/versions/{version}/{op}: the handler, with the
        path parameters where the handlers (and FastAPI's own routing) put them."""
        parts = path[len("/models/"):].split("/")
        if len(parts) == 2 and parts[0]:
            params = {"name": parts[0]}
        elif len(parts) == 4 and parts[1] == "versions" and parts[0] and parts[2]:
            params = {"name": parts[0], "version": parts[2]}
        else:
            return None
        handler = self.handlers.get("/" + parts[-1])
        if handler is not None:
            scope["path_params"] = params
        return handler
