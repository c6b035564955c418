"""The typed errors of the service: a status code, a machine-readable type and a message each.

Nothing here knows HTTP: service/http/errors.py turns them into answers, in one place."""

from __future__ import annotations


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
    """Refused at the door (service/http/admission.py): too many requests in flight, or it waited too long
    before it could be read. 503, like Triton and TEI, + Retry-After; error_type still "overloaded"."""

    status_code = 503


class Unauthorized(ServiceError):
    """No valid API key: 401 with `WWW-Authenticate: Bearer`."""

    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status_code = 403
    error_type = "forbidden"


class MalformedHeader(ServiceError):
    """A header the request cannot be trusted with (two Authorization headers: which one counts?)."""

    status_code = 400
    error_type = "malformed_header"


class QuotaExceeded(ServiceError):
    """A key is over its quota (429 + Retry-After + RateLimit-*)."""

    status_code = 429
    error_type = "quota_exceeded"


class ModelNotReady(ServiceError):
    status_code = 503
    error_type = "model_not_ready"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RequestTimeout(ServiceError):
    status_code = 504
    error_type = "request_timeout"
