"""The request edge: one pure-ASGI middleware that every request passes, in named steps.

    open      the request's record and ID (and its span, when traced)
    key       the presented API key, parsed once (two Authorization headers: 400)
    auth      the key checked for the path (401 / 403)
    admit     the wait so far (503 + Retry-After)
    quota     the key's request rate (429 + Retry-After + RateLimit-*); arms its items budget
    serve     the app, whose answer's status the edge records; a model request takes its in-flight
              place when its body has arrived (503 + Retry-After past max_in_flight)
    close     metrics, the access log line, the span

A refusal is a typed error answered by service/http/errors.py, as every other error is. Pure ASGI:
BaseHTTPMiddleware costs more than the single-item request it wraps.
"""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import ClientDisconnected, ServerBusy, ServiceError
from service.core.metrics import Metrics
from service.http.admission import Admission, InFlight
from service.http.errors import error_response
from service.http.keys import ALWAYS_OPEN, KeyRing, is_admin, presented_key
from service.http.quotas import QuotaGate
from service.http.requests import RECORD, RequestRecord, bind, client_address, incoming_id, log_access, unbind

ENDPOINTS = {"/encode", "/reconstruct", "/sample", "/interpolate", "/anomaly-score", "/healthz", "/readyz",
             "/metrics", "/model", "/models", "/admin/reload", "/drift", "/"}
MODEL_OPERATIONS = {"/encode", "/reconstruct", "/sample", "/interpolate", "/anomaly-score"}
REJECTION_REASONS = {413: "too_large", 429: "queue_full", 503: "not_ready", 504: "timeout"}


def endpoint_label(path: str) -> str:
    """A bounded set of metric labels: known routes, v2 inference, or other."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/models"):  # one label per operation, whichever model: bounded
        operation = "/" + path.rsplit("/", 1)[-1]
        return operation if operation in MODEL_OPERATIONS else "/models"
    if path.startswith("/v2/"):
        return "/v2/infer" if path.endswith("/infer") else "/v2"
    return "other"


class RequestEdge:
    """Open, check, admit, serve and close every HTTP request (see the module's docstring)."""

    def __init__(self, app: ASGIApp, *, keyring: KeyRing, quotas: QuotaGate, admission: Admission,
                 in_flight: InFlight, metrics: Metrics, protect_metrics: bool, access_log: str,
                 tracer: Any = None) -> None:
        self.app, self.keyring, self.quotas, self.admission = app, keyring, quotas, admission
        self.in_flight, self.metrics, self.access_log, self.tracer = in_flight, metrics, access_log, tracer
        self.open_paths = ALWAYS_OPEN if protect_metrics else ALWAYS_OPEN | {"/metrics"}
        self.latency = {e: metrics.request_latency.labels(endpoint=e) for e in ENDPOINTS | {"other", "/v2", "/v2/infer"}}
        self.counters: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = self._open(scope)
        token = bind(record)
        status = 500
        echo = (b"x-request-id", record.request_id.encode())

        async def send_recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), echo]
                if record.quota is not None and record.quota.requests is not None and status != 429:
                    headers += record.quota.requests.headers(time.monotonic())
                message["headers"] = headers
            await send(message)

        counted = [False]  # in flight: from its body's arrival (POST) or its start (anything else)
        try:
            refusal = self._check(scope, record)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_recorded)
                return
            if Admission.applies(scope):
                receive = self._admit_on_body(receive, record, counted)
            elif InFlight.counts(scope):
                self.in_flight.enter()
                counted[0] = True
            await self.app(scope, receive, send_recorded)
        finally:
            if counted[0]:
                self.in_flight.leave()
            self._close(record, status)
            unbind(token)

    def _admit_on_body(self, receive: Receive, record: RequestRecord, counted: list[bool]) -> Receive:
        """receive, taking the in-flight place (or raising ServerBusy) with the body's last bytes."""
        async def receive_admitted() -> Message:
            message = await receive()
            if not counted[0] and message["type"] == "http.request" and not message.get("more_body", False):
                try:
                    self.admission.enter()
                except ServerBusy:
                    record.rejection = "in_flight_limit"  # vaeserve_rejections_total, not the 503's "not_ready"
                    raise
                counted[0] = True
            return message

        return receive_admitted

    def _open(self, scope: Scope) -> RequestRecord:
        started = time.monotonic()
        request_id = incoming_id(scope["headers"])
        span, offset = self.tracer.start_request(scope, started) if self.tracer is not None else (None, 0)
        if request_id is None:
            request_id = self.tracer.trace_id(span) if span is not None else os.urandom(16).hex()
        record = RequestRecord(request_id=request_id, method=scope["method"], path=scope["path"],
                               client=client_address(scope), started=started, span=span,
                               tracer=self.tracer if span is not None else None, wall_offset_ns=offset)
        scope[RECORD] = record
        return record

    def _check(self, scope: Scope, record: RequestRecord) -> ServiceError | None:
        """The key, auth, admit and quota steps: the first refusal, or None to serve it."""
        if scope["method"] == "OPTIONS":  # CORS preflight: carries no key, does no work
            return None
        path = scope["path"]
        try:
            key = presented_key(scope["headers"])
            # Admin routes take POST only: another method goes on to the router's 405, as on any route.
            if scope["method"] == "POST" or not is_admin(path):
                self.keyring.check(path, key, open_paths=self.open_paths)
        except ServiceError as refusal:
            return refusal
        late = self.admission.waited_too_long(scope) if Admission.applies(scope) else None
        if late is not None:
            record.rejection = "waited_too_long"  # vaeserve_rejections_total{reason=...}, not the 503's "not_ready"
            return late
        try:
            record.quota = self.quotas.admit_request(key, path)
        except ServiceError as refusal:
            record.rejection = "quota"
            return refusal
        if record.quota is not None:
            record.key_name = record.quota.name
        return None

    def _close(self, record: RequestRecord, status: int) -> None:
        ended = time.monotonic()
        endpoint = endpoint_label(record.path)
        self.latency[endpoint].observe(ended - record.started)
        counter = self.counters.get((endpoint, status))
        if counter is None:
            counter = self.counters[(endpoint, status)] = self.metrics.requests.labels(endpoint=endpoint,
                                                                                       status=str(status))
        counter.inc()
        if status == ClientDisconnected.status_code:
            self.metrics.client_disconnects.inc()
        elif status in REJECTION_REASONS:  # a 429 can be a key's quota rather than a full queue
            self.metrics.rejections.labels(reason=record.rejection or REJECTION_REASONS[status]).inc()
        if record.span is not None:
            self.tracer.end_request(record, status, ended)
        if self.access_log != "off":
            log_access(record, status=status, ended=ended, mode=self.access_log)
