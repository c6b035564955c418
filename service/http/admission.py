"""Admission at the door: one count of the requests in flight, a bound on the model requests among
them, and no admission for a request that has already waited too long to be answered in time.

Under overload a request waits before any batcher sees it (the accept backlog, event-loop
scheduling, its body), where neither the queue bound nor request_timeout_s applies: at 1,000
connections a probe got no refusal at all and a p99 of 7.4 s. As Triton and text-embeddings-inference
do, the process holds at most `max_in_flight` model requests, each from its body's arrival to its
answer; one more is answered 503 with Retry-After, as is one that already waited half of
request_timeout_s since its first bytes were read (service/server/connections.py stamps that), so the
requests that are accepted keep a latency near request_timeout_s at any load.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from service.core.errors import ServerBusy
from service.core.metrics import Metrics
from service.http.keys import is_upkeep

RECEIVED = "vaeserve.received"  # scope["extensions"][RECEIVED]["monotonic_s"]: when its first bytes were read
MAX_WAIT_SHARE_OF_TIMEOUT = 0.5  # the batcher refuses work it expects to wait longer than this share too
NOT_ADMITTED = ("/admin/", "/v2/repository/", "/jobs")  # control plane and job uploads: not load, never shed


def received_at(scope: Mapping[str, Any]) -> float | None:
    """time.monotonic() when the request's first bytes were read (None: not served by our protocol)."""
    extensions = scope.get("extensions")
    stamp = extensions.get(RECEIVED) if extensions else None
    return stamp["monotonic_s"] if stamp else None


class InFlight:
    """The model requests being handled: what admission bounds, what the gauge shows, what a
    shutdown reports. Probes, scrapes and the control plane are not load and are not counted."""

    def __init__(self, metrics: Metrics) -> None:
        self.count = 0
        self.gauge = metrics.in_flight
        self.last_left_s = 0.0  # time.monotonic() when the last one ended: how long the service has been quiet

    @staticmethod
    def counts(scope: Mapping[str, Any]) -> bool:
        path = scope["path"]
        return not is_upkeep(path) and not path.startswith(NOT_ADMITTED)

    def enter(self) -> None:
        self.count += 1
        self.gauge.inc()

    def leave(self) -> None:
        self.count -= 1
        self.gauge.dec()
        self.last_left_s = time.monotonic()

    def quiet_s(self) -> float:
        """Seconds since the last model request ended (0 while one is in flight)."""
        return 0.0 if self.count else time.monotonic() - self.last_left_s


class Admission:
    """Refuse a model request (a POST) that waited too long at the door, or past the in-flight bound.

    A POST takes its in-flight place when its body has arrived, not at its headers: a client that
    trickles a body holds a connection until body_read_timeout_s (408), never one of the
    max_in_flight places (530 connections sending 1 byte/s sent 68 of 74 normal requests to 503 when
    they did)."""

    def __init__(self, in_flight: InFlight, *, max_in_flight: int, request_timeout_s: float) -> None:
        self.in_flight = in_flight
        self.max_in_flight = max_in_flight
        self.max_wait_s = MAX_WAIT_SHARE_OF_TIMEOUT * request_timeout_s

    @staticmethod
    def applies(scope: Mapping[str, Any]) -> bool:
        return scope["method"] == "POST" and InFlight.counts(scope)

    def waited_too_long(self, scope: Mapping[str, Any]) -> ServerBusy | None:
        """At the door: refuse a request that already waited half its timeout before it could be read."""
        arrived = received_at(scope)
        waited_s = time.monotonic() - arrived if arrived is not None else 0.0
        if waited_s > self.max_wait_s:
            return ServerBusy(f"waited {waited_s:.1f}s before the server could read it (more than half of "
                              "request_timeout_s); retry later", retry_after_s=1)
        return None

    def enter(self) -> None:
        """Its body has arrived: take an in-flight place, or ServerBusy past the bound."""
        if self.in_flight.count >= self.max_in_flight:
            raise ServerBusy(f"server busy: {self.in_flight.count} requests in flight (max_in_flight); retry later",
                             retry_after_s=1)
        self.in_flight.enter()
