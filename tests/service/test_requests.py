"""Request IDs and the access log, on a real server: the caller's ID comes back and is on every
log line of its request; traceparent or a fresh ID otherwise; one JSON line per request, no inputs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, start_server

ADMIN = {"authorization": "Bearer admin-key"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def logged_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("access-log"), access_log="json",
                        admin_api_keys='["admin-key"]')
    yield proc
    proc.stop()


def access_lines(server: ServerProcess, request_id: str, *, timeout_s: float = 5) -> list[dict]:  # type: ignore[type-arg]
    """The server's JSON access-log lines for one request ID (stdout is flushed line by line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        found = [line for line in lines if line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_the_callers_request_id_comes_back_and_is_logged_once(logged_server: ServerProcess,
                                                              test_images: object) -> None:
    items = test_images[:3].tolist()  # type: ignore[index]
    response = httpx.post(logged_server.url + "/anomaly-score", json={"inputs": items, "mc_samples": 8},
                          headers={"x-request-id": "order-42.retry-1"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "order-42.retry-1"
    (line,) = access_lines(logged_server, "order-42.retry-1")
    assert line["method"] == "POST" and line["route"] == "/anomaly-score" and line["status"] == 200
    assert (line["model"], line["version"], line["items"], line["mc_samples"]) == ("tiny-vae", "1", 3, 8)
    assert 0 < line["compute_s"] < line["latency_s"] and 0 <= line["queue_s"] < line["latency_s"]
    assert line["client"].startswith("127.0.0.1:") and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line["time"])
    assert set(line) == {"time", "request_id", "method", "route", "status", "model", "version", "items",
                         "mc_samples", "queue_s", "compute_s", "latency_s", "client", "key"}  # no input data


def test_every_log_line_of_a_request_carries_its_id(logged_server: ServerProcess, tmp_path: Path) -> None:
    response = httpx.post(logged_server.url + "/admin/reload", json={"artifacts_dir": str(tmp_path / "none")},
                          headers={**ADMIN, "x-request-id": "reload-7"})
    assert response.status_code == 409
    assert access_lines(logged_server, "reload-7")[0]["status"] == 409
    refused = [line for line in logged_server.log().splitlines() if "reload refused" in line]
    assert refused and all("[reload-7]" in line for line in refused), refused


def test_traceparent_or_a_fresh_id_when_the_caller_sends_none(logged_server: ServerProcess) -> None:
    traced = httpx.get(logged_server.url + "/model", headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    assert traced.headers["x-request-id"] == TRACE_ID
    fresh = {httpx.get(logged_server.url + "/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(fresh) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in fresh)
    unsafe = httpx.get(logged_server.url + "/healthz", headers={"x-request-id": 'a "quoted" id'})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])  # replaced: ids go into log lines
    assert access_lines(logged_server, unsafe.headers["x-request-id"])[0]["route"] == "/healthz"


def test_refusals_are_logged_with_their_id(logged_server: ServerProcess) -> None:
    response = httpx.post(logged_server.url + "/encode", content=b"{not json", headers={"x-request-id": "bad-body"})
    assert response.status_code == 400 and response.headers["x-request-id"] == "bad-body"
    (line,) = access_lines(logged_server, "bad-body")
    assert line["status"] == 400 and line["model"] is None
