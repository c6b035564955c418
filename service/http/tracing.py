"""OpenTelemetry traces (the optional `tracing` extra), off unless OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set or VAESERVE_TRACING=true.

A request is one SERVER span, child of the caller's context (W3C traceparent, or whatever
OTEL_PROPAGATORS names), with children `parse` (until its first item is queued), `queue <graph>`
and `compute <graph>` per batch it took part in, and `respond` (from its last result to the last
byte). A batch is its own span, `batch <graph>`, linked to every traced request in it; each
request's `compute` span links back to it. The children are recorded when the request ends, from
the batcher's timestamps, so tracing adds no work to the batch loop beyond one span per batch.
The standard OTEL_* variables apply (exporter endpoint and headers, sampler, service name, batch
processor delays). opentelemetry is imported only here and only when tracing is on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from service.core.batcher import BatchStats
from service.settings import Settings

log = logging.getLogger("vaeserve.tracing")


def tracing_requested(settings: Settings) -> bool:
    if settings.tracing is not None:
        return settings.tracing
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def wall_offset_ns() -> int:
    """Epoch minus monotonic clock, in ns. Spans are stamped in wall-clock time from the batcher's
    monotonic timestamps; one offset per request keeps its spans exactly nested."""
    return time.time_ns() - time.monotonic_ns()


def wall_ns(monotonic_s: float, offset_ns: int) -> int:
    return int(monotonic_s * 1e9) + offset_ns


class RequestTracer:
    """Starts and ends request spans and records batch spans, on one SDK tracer provider."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, propagate, trace

        self.provider = provider
        self.tracer = provider.get_tracer("vaeserve")
        self._extract, self._trace, self._empty = propagate.extract, trace, context.Context
        self._server = trace.SpanKind.SERVER

    def start_request(self, scope: dict[str, Any], started: float) -> tuple[Any, int]:
        """The request's span, started at `started`, and the clock offset its other spans use."""
        offset = wall_offset_ns()
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        client = scope.get("client")
        span = self.tracer.start_span(
            f"{method} {path}", context=self._extract(carrier), kind=self._server, start_time=wall_ns(started, offset),
            attributes={"http.request.method": method, "url.path": path,
                        "client.address": client[0] if client else ""})
        return span, offset

    def trace_id(self, span: Any) -> str | None:
        context = span.get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None

    def end_request(self, record: Any, status: int, ended: float) -> None:
        span = record.span
        if not span.is_recording():  # not sampled: nothing to add
            span.end()
            return
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("vaeserve.request_id", record.request_id)
        for key, value in (("vaeserve.model.name", record.model and record.model["name"]),
                           ("vaeserve.model.version", record.model and record.model["version"]),
                           ("vaeserve.items", record.items), ("vaeserve.mc_samples", record.mc_samples),
                           ("vaeserve.key", record.key_name)):
            if value is not None:
                span.set_attribute(key, value)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        offset = record.wall_offset_ns
        if record.chunks:
            parent = self._trace.set_span_in_context(span)
            self._child("parse", parent, offset, record.started, min(c[1] for c in record.chunks))
            for graph, enqueued, started, finished, batch in record.chunks:
                self._child(f"queue {graph}", parent, offset, enqueued, started)
                links = [self._trace.Link(batch)] if batch is not None else None
                self._child(f"compute {graph}", parent, offset, started, finished, links=links)
            self._child("respond", parent, offset, max(c[3] for c in record.chunks), ended)
        span.end(end_time=wall_ns(ended, offset))

    def _child(self, name: str, parent: Any, offset: int, start: float, end: float, links: Any = None) -> None:
        span = self.tracer.start_span(name, context=parent, start_time=wall_ns(start, offset), links=links)
        span.end(end_time=wall_ns(end, offset))

    def batch(self, graph: str, stats: BatchStats, members: Sequence[Any]) -> Any:
        """The batch's span context (for the requests' links), or None when none of them is sampled."""
        links = [self._trace.Link(m.span.get_span_context()) for m in members if m.span.is_recording()]
        if not links:
            return None
        offset = members[0].wall_offset_ns
        span = self.tracer.start_span(
            f"batch {graph}", context=self._empty(), links=links, start_time=wall_ns(stats.started_at, offset),
            attributes={"vaeserve.graph": graph, "vaeserve.batch.items": stats.size, "vaeserve.batch.requests": len(links)})
        span.end(end_time=wall_ns(stats.started_at + stats.inference_s, offset))
        return span.get_span_context()


def make_tracer(settings: Settings, provider: Any = None) -> RequestTracer | None:
    """A tracer exporting over OTLP/HTTP, or on the given SDK provider (tests: an in-memory exporter)."""
    if provider is None:
        if not tracing_requested(settings):
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.error("tracing is on (VAESERVE_TRACING or OTEL_EXPORTER_OTLP_ENDPOINT) but the `tracing` extra is not "
                      "installed: pip install 'vaeserve[tracing]'; serving without traces")
            return None
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still win: Resource.create merges them in.
        resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "vaeserve"})
        provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER(_ARG)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint etc. from OTEL_EXPORTER_OTLP_*
        log.info("tracing on: spans go to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                 or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "the OTLP default (localhost:4318)")
    return RequestTracer(provider)
