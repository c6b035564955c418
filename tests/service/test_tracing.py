"""OpenTelemetry traces: the spans of a request (parse, queue, compute, respond) under the caller's
trace, batch spans linked to every request in the batch; in-process with the SDK's in-memory
exporter, and from a real server over OTLP/HTTP to a collector stand-in on 127.0.0.1."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # the dev extra includes `tracing`
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from harness.servers import free_port, start_server
from service.http.tracing import make_tracer
from service.settings import Settings

TRACE_IDS = ["0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"]
PARENT_IDS = ["b7ad6b7169203331", "00f067aa0ba902b7"]
ITEM = {"inputs": [[0.5] * 784]}


def traceparent(i: int) -> dict[str, str]:
    return {"traceparent": f"00-{TRACE_IDS[i]}-{PARENT_IDS[i]}-01"}


def test_tracing_is_off_unless_asked_and_the_service_runs_without_the_extra(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert make_tracer(Settings()) is None
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the extra were not installed
    with caplog.at_level(logging.ERROR, logger="vaeserve.tracing"):
        assert make_tracer(Settings(tracing=True)) is None
    assert "pip install 'vaeserve[tracing]'" in caplog.text


def test_spans_follow_the_callers_trace_in_process(artifacts_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(artifacts_dir=artifacts_dir), tracer_provider=provider)
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.1)
        exporter.clear()
        response = client.post("/anomaly-score", json=ITEM, headers=traceparent(0))
        assert response.status_code == 200 and response.headers["x-request-id"] == TRACE_IDS[0]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["POST /anomaly-score"]
    assert f"{root.context.trace_id:032x}" == TRACE_IDS[0] and f"{root.parent.span_id:016x}" == PARENT_IDS[0]
    assert root.kind == SpanKind.SERVER and root.attributes["http.response.status_code"] == 200
    assert root.attributes["vaeserve.model.name"] == "tiny-vae" and root.attributes["vaeserve.mc_samples"] == 16
    steps = [spans[n] for n in ("parse", "queue scorer_core", "compute scorer_core", "respond")]
    for step in steps:
        assert step.context.trace_id == root.context.trace_id and step.parent.span_id == root.context.span_id
    assert root.start_time == steps[0].start_time and steps[-1].end_time == root.end_time  # one clock offset
    assert all(a.end_time <= b.start_time + 1000 for a, b in zip(steps, steps[1:]))  # in order (1 us rounding)
    batch = spans["batch scorer_core"]
    assert batch.context.trace_id != root.context.trace_id  # its own trace, linked to every request in it
    assert [link.context.span_id for link in batch.links] == [root.context.span_id]
    assert [link.context.span_id for link in spans["compute scorer_core"].links] == [batch.context.span_id]
    assert batch.attributes["vaeserve.batch.items"] == 1


class Collector(BaseHTTPRequestHandler):
    """OTLP/HTTP receiver: keeps every span it is sent."""

    spans: list[tuple[Any, Any]] = []  # (resource, span)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource_spans.resource, span) for span in scope_spans.spans)
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def collector() -> Iterator[str]:
    Collector.spans = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_real_server_exports_spans_under_the_callers_trace_over_otlp(
        artifacts_dir: Path, tmp_path: Path, collector: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "vaeserve-test")
    # A long idle wait so both requests land in one batch.
    proc = start_server(artifacts_dir, tmp_path, batch_wait_timeout_s=0.2, batch_wait_when_idle="true")
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda i: httpx.post(proc.url + "/anomaly-score", json=ITEM, headers=traceparent(i),
                                                         timeout=30), range(2)))
        assert [a.status_code for a in answers] == [200, 200]
        deadline = time.monotonic() + 10
        while True:
            by_name: dict[str, list[Any]] = {}
            for resource, span in Collector.spans:
                by_name.setdefault(span.name, []).append((resource, span))
            if len(by_name.get("POST /anomaly-score", [])) == 2 and "batch scorer_core" in by_name:
                break
            assert time.monotonic() < deadline, f"spans received: {sorted(by_name)}"
            time.sleep(0.1)
    finally:
        proc.stop()
    requests = {span.trace_id.hex(): (resource, span) for resource, span in by_name["POST /anomaly-score"]}
    assert sorted(requests) == sorted(TRACE_IDS)
    for i, trace_id in enumerate(TRACE_IDS):
        resource, span = requests[trace_id]
        assert span.parent_span_id.hex() == PARENT_IDS[i] and span.kind == span.SPAN_KIND_SERVER
        names = {a.key: a.value.string_value for a in resource.attributes}
        assert names["service.name"] == "vaeserve-test"
    ((_, batch),) = by_name["batch scorer_core"]
    linked = {(link.trace_id.hex(), link.span_id) for link in batch.links}
    assert linked == {(t, requests[t][1].span_id) for t in TRACE_IDS}, "one batch, linked to both requests"
    assert {span.trace_id.hex() for _, span in by_name["compute scorer_core"]} == set(TRACE_IDS)
