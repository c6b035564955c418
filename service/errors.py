"""Typed errors the service raises, and the one mapping from errors to JSON responses."""

from __future__ import annotations

import orjson
from starlette.responses import Response


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


class Overloaded(ServiceError):
    """The queue is full: refuse at once rather than let the client wait (429 + Retry-After)."""

    status_code = 429
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


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
    return json_error(exc.status_code, exc.message, exc.error_type, exc.headers)


def internal_error_response() -> Response:
    return json_error(500, "internal error; it has been logged", "internal_error")
