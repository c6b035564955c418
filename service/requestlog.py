"""Request IDs, the record of one request, and the structured access log (pure ASGI middleware).

The ID is the caller's `X-Request-ID` when it is a sane token, else the trace id of a W3C
`traceparent`, else a new one (the request's trace id when tracing is on, so logs and traces share
it). It is echoed in the answer's `X-Request-ID` header and carried by every log line emitted while
the request runs (a contextvar read by a log-record factory: `%(request_id)s`). The access log
(`VAESERVE_ACCESS_LOG=json|text|off`) writes one line per request with no input data in it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import BatchStats, batch_member
from service.metrics import Metrics
from service.security import ALWAYS_OPEN

access_log = logging.getLogger("vaeserve.access")
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")  # no spaces or quotes: ids go into log lines
TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
NOT_IN_FLIGHT = ALWAYS_OPEN | {"/metrics"}  # probes and scrapes are not load


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What is known about one request; the route, the batcher and the quotas fill it in."""

    request_id: str
    method: str
    path: str
    client: str | None
    started: float  # time.monotonic()
    model: Mapping[str, str] | None = None
    items: int | None = None
    mc_samples: int | None = None
    key_name: str | None = None
    rejection: str | None = None  # a reason for vaeserve_rejections_total other than the status's
    compute_s: float = 0.0  # run time of the batches it took part in
    queue_s: dict[str, float] = field(default_factory=dict)  # per graph, the longest wait of its chunks
    admit: Callable[[int], None] | None = None  # the key's item budget (service.quotas)
    span: Any = None  # its OpenTelemetry span when traced, and the service.tracing.RequestTracer
    tracer: Any = None
    wall_offset_ns: int = 0  # the span clock's offset (service.tracing)
    chunks: list[tuple[str, float, float, float, Any]] = field(default_factory=list)  # traced only
    last_batch: int = 0


_current: ContextVar[RequestRecord | None] = ContextVar("vaeserve_request", default=None)


def current_request() -> RequestRecord | None:
    return _current.get()


def note_work(model: Mapping[str, str], *, items: int, mc_samples: int = 1) -> None:
    """A route says what the request asks of the model once it is parsed: logged, traced, and
    charged to the key's items x samples quota (QuotaExceeded) before anything is queued."""
    record = _current.get()
    if record is None:
        return
    record.model, record.items, record.mc_samples = model, items, mc_samples
    if record.admit is not None:
        record.admit(items * mc_samples)


def observe_batch(graph: str, stats: BatchStats) -> None:
    """Attribute a finished batch to the requests in it: queue wait, compute time, trace links."""
    traced = [m for m in stats.members if m is not None and m.span is not None]
    batch_context = traced[0].tracer.batch(graph, stats, traced) if traced else None
    finished = stats.started_at + stats.inference_s
    for member, wait in zip(stats.members, stats.queue_waits_s):
        if member is None:
            continue
        if member.last_batch != id(stats):  # two chunks of one request in one batch ran once
            member.last_batch = id(stats)
            member.compute_s += stats.inference_s
        member.queue_s[graph] = max(member.queue_s.get(graph, 0.0), wait)
        if member.span is not None:
            member.chunks.append((graph, stats.started_at - wait, stats.started_at, finished, batch_context))


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


def _incoming_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    traceparent = None
    for name, value in headers:
        if name == b"x-request-id" and REQUEST_ID.match(value):
            return value.decode()
        if name == b"traceparent":
            traceparent = TRACEPARENT.match(value)
    return traceparent.group(1).decode() if traceparent else None


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


class RequestContextMiddleware:
    """Outermost: gives the request its ID and record, counts it in flight, logs and traces it."""

    def __init__(self, app: ASGIApp, *, mode: str, metrics: Metrics, tracer: Any = None) -> None:
        self.app, self.mode, self.tracer = app, mode, tracer
        self.in_flight = metrics.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = _incoming_id(scope["headers"])
        span, offset = self.tracer.start_request(scope, started) if self.tracer is not None else (None, 0)
        if request_id is None:
            request_id = self.tracer.trace_id(span) if span is not None else os.urandom(16).hex()
        record = RequestRecord(request_id, scope["method"], scope["path"], _client(scope), started, span=span,
                               tracer=self.tracer if span is not None else None, wall_offset_ns=offset)
        token, member = _current.set(record), batch_member.set(record)
        echo = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), echo]
            await send(message)

        counted = scope["path"] not in NOT_IN_FLIGHT
        if counted:
            self.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.in_flight.dec()
            ended = time.monotonic()
            if span is not None:
                self.tracer.end_request(record, status, ended)
            if self.mode != "off":
                self._log(record, status, ended)
            batch_member.reset(member)
            _current.reset(token)

    def _log(self, r: RequestRecord, status: int, ended: float) -> None:
        wall = time.time() - (ended - r.started)
        fields = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z",
            "request_id": r.request_id, "method": r.method, "route": r.path, "status": status,
            "model": r.model["name"] if r.model else None, "version": r.model["version"] if r.model else None,
            "items": r.items, "mc_samples": r.mc_samples, "queue_s": round(sum(r.queue_s.values()), 6),
            "compute_s": round(r.compute_s, 6), "latency_s": round(ended - r.started, 6), "client": r.client,
            "key": r.key_name,
        }
        if self.mode == "json":
            access_log.info(orjson.dumps(fields).decode())
        else:
            access_log.info(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k != "request_id"))
