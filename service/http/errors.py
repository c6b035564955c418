"""The one mapping from errors to answers: every error the service sends is
{"error": message, "error_type": type} with the status and headers of its typed error."""

from __future__ import annotations

import asyncio
import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.core.errors import BodyTooLarge, ClientDisconnected, ServiceError

log = logging.getLogger("vaeserve.errors")


def json_error(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Response:
    """Every error the service sends: {"error": message, "error_type": type}."""
    return Response(orjson.dumps({"error": message, "error_type": error_type}), status_code=status,
                    media_type="application/json", headers=headers)


def error_response(exc: ServiceError) -> Response:
    if isinstance(exc, BodyTooLarge):
        return LingeringCloseResponse(orjson.dumps({"error": exc.message, "error_type": exc.error_type}),
                                      status_code=exc.status_code, headers=exc.headers, linger_s=exc.linger_s,
                                      linger_bytes=exc.linger_bytes)
    return json_error(exc.status_code, exc.message, exc.error_type, exc.headers)


class LingeringCloseResponse(Response):
    """Send the whole answer, read and drop the rest of the request body (bounded in time and bytes),
    then close: closing with unread bytes would reset the connection, and a client still sending
    would see the reset, not the answer."""

    def __init__(self, content: bytes, *, status_code: int, headers: dict[str, str], linger_s: float,
                 linger_bytes: int) -> None:
        super().__init__(content, status_code=status_code, headers=headers, media_type="application/json")
        self.linger_s = linger_s
        self.linger_bytes = linger_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})  # complete (Content-Length)
        dropped = 0
        try:
            async with asyncio.timeout(self.linger_s):
                while dropped <= self.linger_bytes:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        break
                    dropped += len(message.get("body", b""))
        except TimeoutError:
            pass
        await send({"type": "http.response.body", "body": b""})  # the server closes (Connection: close)


def internal_error_response() -> Response:
    return json_error(500, "internal error; it has been logged", "internal_error")


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
