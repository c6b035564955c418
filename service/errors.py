"""Typed errors the service raises, and the one mapping from errors to JSON responses."""

from __future__ import annotations

import asyncio

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class ServiceError(Exception):
    """Base: a status code, a machine-readable type, and a message for humans."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServiceError):
    status_code = 422
    error_type = "invalid_input"


class MalformedBody(ServiceError):
    status_code = 400
    error_type = "malformed_body"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class NotAcceptable(ServiceError):
    status_code = 406
    error_type = "not_acceptable"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"


class Conflict(ServiceError):
    status_code = 409
    error_type = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class BodyTooLarge(PayloadTooLarge):
    """The body passes max_body_bytes while the client may still be sending it: answer, then close
    after dropping what it sends for up to linger_s / linger_bytes (a lingering close, as nginx does),
    so it finishes sending and reads the 413 instead of a reset."""

    def __init__(self, message: str, *, linger_s: float, linger_bytes: int) -> None:
        super().__init__(message, headers={"Connection": "close"})
        self.linger_s = linger_s
        self.linger_bytes = linger_bytes


class BodyReadTimeout(ServiceError):
    """The body did not arrive within body_read_timeout_s (a slow or stalled client): 408, then close."""

    status_code = 408
    error_type = "body_read_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class ClientDisconnected(ServiceError):
    """The client went away before its answer: not a server error. Nobody reads the response; 499
    (nginx's "client closed request") keeps it apart in the metrics and the access log."""

    status_code = 499
    error_type = "client_disconnected"


class Overloaded(ServiceError):
    """The queue is full: refuse at once rather than let the client wait (429 + Retry-After)."""

    status_code = 429
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class ServerBusy(Overloaded):
    """Refused at the door (service.admission): too many requests in flight, or it waited too long
    before it could be read. 503, like Triton and TEI, + Retry-After; error_type still "overloaded"."""

    status_code = 503


class ModelNotReady(ServiceError):
    status_code = 503
    error_type = "model_not_ready"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RequestTimeout(ServiceError):
    status_code = 504
    error_type = "request_timeout"


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
