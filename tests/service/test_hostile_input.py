"""Bad input as an attacker sends it, against a real server: .npy headers that lie, clients that
go away or stall mid-body, bodies far over the limit. Each gets a plain 4xx (or is counted apart),
never a 500, a hang or a reset."""

from __future__ import annotations

import io
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from numpy.lib import format as npy_format

from harness.servers import ServerProcess, start_server

BODY_READ_TIMEOUT_S = 2.0
NPY = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module")
def hostile_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default limits (32 MB bodies), a short body-read timeout so stalls end within the test."""
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("hostile"), body_read_timeout_s=BODY_READ_TIMEOUT_S)
    yield proc
    proc.stop()


def npy_claiming(shape: tuple[int, ...], *, descr: str = "<f4", data: bytes = b"\0" * 64) -> bytes:
    """A valid .npy header that claims `shape`, followed by `data` (not what the header claims)."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match, "no VmRSS"
    return int(match.group(1)) / 1024


def metric(server: ServerProcess, pattern: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(m) for m in re.findall(rf"^{pattern} (\S+)$", text, re.MULTILINE))


def raw_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read off a socket: status, headers, body (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("shape,descr,status,message", [
    ((10**12, 784), "<f4", 413, "claims 1000000000000 items; the limit is 1024"),
    ((1000, 784_000), "<f4", 422, "claims shape [1000, 784000] of float32 (3136000000 bytes), but the body holds 64"),
    ((3, 784), "<f8", 422, "(18816 bytes), but the body holds 64"),
    ((3, 784), "|O", 422, "must be numeric, got dtype object"),
])
def test_npy_headers_that_lie_about_their_size_are_refused_before_anything_is_allocated(
        hostile_server: ServerProcess, shape: tuple[int, ...], descr: str, status: int, message: str) -> None:
    good = io.BytesIO()
    np.save(good, np.full((2, 784), 0.5, dtype=np.float32))
    assert httpx.post(hostile_server.url + "/encode", content=good.getvalue(), headers=NPY).status_code == 200
    before = rss_mib(hostile_server.process.pid)
    for _ in range(5):
        for path in ("/encode", "/reconstruct", "/anomaly-score"):
            response = httpx.post(hostile_server.url + path, content=npy_claiming(shape, descr=descr), headers=NPY)
            assert response.status_code == status, response.text
            assert message in response.json()["error"] and response.json()["error"].startswith("inputs: ")
    grown = rss_mib(hostile_server.process.pid) - before
    print(f"\nRSS {before:.0f} MiB before, {grown:+.1f} MiB after 15 requests claiming {shape} {descr}")
    assert grown < 10, f"RSS grew {grown:.1f} MiB"


def test_v2_binary_tensors_that_claim_more_than_they_carry_are_refused(hostile_server: ServerProcess) -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1024, 784], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 64}}]})
    response = httpx.post(hostile_server.url + "/v2/models/encoder/infer", content=header + b"\0" * 64,
                          headers={"Inference-Header-Content-Length": str(len(header)),
                                   "content-type": "application/octet-stream"})
    assert response.status_code == 422, response.text
    assert "inputs[0] (x): shape [1024, 784] of FP32 is 3211264 bytes, binary_data_size is 64" in response.json()["error"]


@pytest.mark.parametrize("path", ["/encode", "/v2/models/encoder/infer"])
def test_a_client_that_disconnects_mid_body_is_counted_apart_and_not_logged_as_a_crash(
        hostile_server: ServerProcess, path: str) -> None:
    before = metric(hostile_server, "vaeserve_client_disconnects_total")
    with socket.create_connection(("127.0.0.1", hostile_server.port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100000\r\n\r\n{\"inputs\": [[0.5, 0.5".encode())
        time.sleep(0.3)  # the handler is reading the body now
    deadline = time.monotonic() + 5
    while metric(hostile_server, "vaeserve_client_disconnects_total") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(hostile_server, "vaeserve_client_disconnects_total") == before + 1
    assert metric(hostile_server, 'vaeserve_requests_total\\{endpoint="[^"]*",status="500"\\}') == 0
    log = hostile_server.log()
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]


def test_a_stalled_body_gets_408_and_200_stalled_clients_do_not_hold_up_the_others(
        hostile_server: ServerProcess) -> None:
    stalled = []
    for _ in range(200):  # each sends its headers and a tenth of its body, then nothing
        sock = socket.create_connection(("127.0.0.1", hostile_server.port))
        sock.sendall(b"POST /anomaly-score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"{\"inputs\": [[" + b"0.5," * 22)
        stalled.append(sock)
    started = time.monotonic()
    latencies = []
    try:
        with httpx.Client(base_url=hostile_server.url, timeout=10) as client:
            while time.monotonic() - started < BODY_READ_TIMEOUT_S * 0.75:  # while all 200 are stalled
                sent = time.perf_counter()
                response = client.post("/anomaly-score", json={"inputs": [[0.5] * 784], "mc_samples": 1})
                latencies.append(time.perf_counter() - sent)
                assert response.status_code == 200, response.text
        for sock in stalled:
            sock.settimeout(BODY_READ_TIMEOUT_S + 5)
            status, headers, body = raw_response(sock)
            assert status == 408 and headers["connection"] == "close", (status, headers)
            assert orjson.loads(body)["error_type"] == "body_read_timeout"
        waited_s = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
    p99_ms = float(np.percentile(latencies, 99)) * 1000
    print(f"\n200 stalled clients: {len(latencies)} normal requests meanwhile, p50 "
          f"{np.percentile(latencies, 50) * 1000:.1f} ms, p99 {p99_ms:.1f} ms; all 200 got 408 within {waited_s:.1f} s")
    assert len(latencies) >= 20 and p99_ms < 500, f"p99 {p99_ms:.0f} ms over {len(latencies)} requests"
    assert waited_s < BODY_READ_TIMEOUT_S + 3


@pytest.mark.parametrize("path", ["/encode", "/v2/models/encoder/infer"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_50_mb_body_gets_the_413_answer_not_a_connection_reset(hostile_server: ServerProcess, path: str,
                                                                 framing: str) -> None:
    size, piece = 50_000_000, b"0" * 1_000_000
    length = f"Content-Length: {size}" if framing == "content-length" else "Transfer-Encoding: chunked"
    with socket.create_connection(("127.0.0.1", hostile_server.port)) as sock:
        sock.settimeout(30)
        # Connection: close, as many clients send: the server must not close while we still send.
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n"
                     "Connection: close\r\n\r\n".encode())
        for _ in range(size // len(piece)):
            sock.sendall(piece if framing == "content-length" else b"%x\r\n%s\r\n" % (len(piece), piece))
        if framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        status, headers, body = raw_response(sock)
    assert status == 413 and headers["connection"] == "close"
    assert orjson.loads(body)["error_type"] == "payload_too_large"
    assert "exceeds the limit of 33554432" in orjson.loads(body)["error"]


def test_openapi_declares_the_v2_infer_request_bodies(hostile_server: ServerProcess) -> None:
    paths = httpx.get(hostile_server.url + "/openapi.json").json()["paths"]
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        assert {"application/json", "application/octet-stream"} <= set(body["content"])
        assert body["content"]["application/json"]["schema"]["required"] == ["inputs"]
