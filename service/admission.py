"""Admission at the door: a bounded number of model requests in flight, and none admitted once it has
waited too long to be answered in time.

Under overload a request waits before any batcher sees it (the accept backlog, event-loop
scheduling, its body), where neither the queue bound nor request_timeout_s applies: at 1,000
connections a probe got no refusal at all and a p99 of 7.4 s. As Triton and text-embeddings-inference
do, the process holds at most `max_in_flight` model requests; one more is answered 503 with
Retry-After before its body is read, as is one that already waited half of request_timeout_s since
its first bytes were read (connections.HttpProtocol stamps that), so the requests that are accepted
keep a latency near request_timeout_s at any load.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from service.connections import received_at
from service.errors import ServerBusy, error_response
from service.requestlog import current_request

MAX_WAIT_SHARE_OF_TIMEOUT = 0.5  # the batcher refuses work it expects to wait longer than this share too
NOT_ADMITTED = ("/admin/", "/v2/repository/")  # control-plane POSTs: not load, never shed


class AdmissionMiddleware:
    """Pure ASGI: POSTs to the model routes past the in-flight bound, or already too late, get 503."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int, request_timeout_s: float) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_wait_s = MAX_WAIT_SHARE_OF_TIMEOUT * request_timeout_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].startswith(NOT_ADMITTED):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await self._refuse(scope, receive, send, "in_flight_limit",
                               f"server busy: {self.in_flight} requests in flight (max_in_flight); retry later")
            return
        arrived = received_at(scope)
        waited_s = time.monotonic() - arrived if arrived is not None else 0.0
        if waited_s > self.max_wait_s:
            await self._refuse(scope, receive, send, "waited_too_long",
                               f"waited {waited_s:.1f}s before the server could read it (more than half of "
                               "request_timeout_s); retry later")
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, reason: str, message: str) -> None:
        record = current_request()
        if record is not None:
            record.rejection = reason  # vaeserve_rejections_total{reason=...}, not the 503's "not_ready"
        await error_response(ServerBusy(message, retry_after_s=1))(scope, receive, send)
