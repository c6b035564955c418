"""The record of one request at the edge: its ID, what it asked of the models (a core Work), who
sent it, and the structured access log line written when it ends.

The ID is the caller's `X-Request-ID` when it is a sane token, else the trace id of a W3C
`traceparent`, else a new one (the request's trace id when tracing is on, so logs and traces share
it). It is echoed in the answer's `X-Request-ID` header and carried by every log line emitted while
the request runs (a contextvar read by a log-record factory: `%(request_id)s`). The access log
(`VAESERVE_ACCESS_LOG=json|text|off`) writes one line per request with no input data in it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

from service.core.work import Work

access_log = logging.getLogger("vaeserve.access")
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")  # no spaces or quotes: ids go into log lines
TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
RECORD = "vaeserve.record"  # scope[RECORD]: the request's RequestRecord, for the routes


@dataclass(slots=True, eq=False, kw_only=True)
class RequestRecord(Work):
    """One request: the edge fills in who and how it ended; the route and the batchers, its Work."""

    request_id: str
    method: str
    path: str
    client: str | None
    started: float  # time.monotonic()
    key_name: str | None = None
    rejection: str | None = None  # a reason for vaeserve_rejections_total other than the status's
    quota: Any = None  # its key's KeyQuota (service/http/quotas.py), when one applies


_current: ContextVar[RequestRecord | None] = ContextVar("vaeserve_request", default=None)


def bind(record: RequestRecord | None) -> Any:
    """Make `record` the one log lines name; returns the token to unbind it with."""
    return _current.set(record)


def unbind(token: Any) -> None:
    _current.reset(token)


def record_of(scope: Mapping[str, Any]) -> RequestRecord | None:
    return scope.get(RECORD)


def incoming_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    traceparent = None
    for name, value in headers:
        if name == b"x-request-id" and REQUEST_ID.match(value):
            return value.decode()
        if name == b"traceparent":
            traceparent = TRACEPARENT.match(value)
    return traceparent.group(1).decode() if traceparent else None


def client_address(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def _with_request_id(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        current = _current.get()
        record.request_id = current.request_id if current is not None else "-"
        return record
    make.vaeserve_request_id = True  # type: ignore[attr-defined]
    return make


def configure_logging(mode: str) -> None:
    """Every log record gets `request_id`; the access log goes to stdout as JSON lines (no prefix,
    so collectors parse them as they are) or through the service's own log format."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "vaeserve_request_id", False):
        logging.setLogRecordFactory(_with_request_id(factory))
    for handler in [h for h in access_log.handlers if getattr(h, "vaeserve_access", False)]:
        access_log.removeHandler(handler)
    access_log.propagate = mode == "text"
    access_log.setLevel(logging.INFO)
    if mode == "json":
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.vaeserve_access = True  # type: ignore[attr-defined]
        access_log.addHandler(handler)


def log_access(r: RequestRecord, *, status: int, ended: float, mode: str) -> None:
    """The access log line of a finished request (mode json or text)."""
    wall = time.time() - (ended - r.started)
    fields = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z",
        "request_id": r.request_id, "method": r.method, "route": r.path, "status": status,
        "model": r.model["name"] if r.model else None, "version": r.model["version"] if r.model else None,
        "items": r.items, "mc_samples": r.mc_samples, "queue_s": round(sum(r.queue_s.values()), 6),
        "compute_s": round(r.compute_s, 6), "latency_s": round(ended - r.started, 6), "client": r.client,
        "key": r.key_name,
    }
    if mode == "json":
        access_log.info(orjson.dumps(fields).decode())
    else:
        access_log.info(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k != "request_id"))
