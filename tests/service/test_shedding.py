"""Overload shed at the door, and a shutdown that loses nothing, against a real server; and the
admission rules themselves, in process."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from starlette.types import Scope

from harness.servers import ServerProcess, start_server
from service.core.errors import ServerBusy
from service.core.metrics import Metrics
from service.http.admission import RECEIVED, Admission, InFlight

REQUEST_TIMEOUT_S = 2.0
ONE_ITEM = orjson.dumps({"inputs": [[0.5] * 784], "mc_samples": 1})


@pytest.fixture(scope="module")
def busy_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A small in-flight bound and a short request timeout, so both are reached quickly."""
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("busy"), max_in_flight=32,
                        request_timeout_s=REQUEST_TIMEOUT_S)
    yield proc
    proc.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def request_bytes(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match
    return int(match.group(1)) / 1024


def test_a_connection_storm_is_shed_with_503_and_the_accepted_requests_stay_fast(busy_server: ServerProcess) -> None:
    connections, duration_s = 400, 5.0  # closed loop, 12.5x the in-flight bound, keep-alive as wrk does

    async def client(answers: list[Answer], errors: list[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", busy_server.port)
        stop = time.monotonic() + duration_s
        try:
            while time.monotonic() < stop:
                sent = time.monotonic()
                writer.write(request_bytes("/anomaly-score", ONE_ITEM))
                status, headers, body = await asyncio.wait_for(read_answer(reader), 10)
                answers.append(Answer(status, headers, body, time.monotonic() - sent))
                if headers.get("connection") == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", busy_server.port)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            errors.append(repr(exc))
        finally:
            writer.close()

    async def storm() -> tuple[list[Answer], list[str]]:
        answers: list[Answer] = []
        errors: list[str] = []
        await asyncio.gather(*(client(answers, errors) for _ in range(connections)))
        return answers, errors

    answers, errors = asyncio.run(storm())
    statuses = Counter(a.status for a in answers)
    assert not errors, errors[:5]
    assert set(statuses) <= {200, 429, 503}, statuses
    refused = [a for a in answers if a.status != 200]
    assert statuses[503] > 0 and statuses[200] > 0, statuses
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1
        assert orjson.loads(answer.body)["error_type"] == "overloaded"
    accepted = sorted(a.seconds for a in answers if a.status == 200)
    p99_s = accepted[int(0.99 * (len(accepted) - 1))]
    rss = rss_mib(busy_server.process.pid)
    print(f"\n{connections} connections for {duration_s:.0f} s: {dict(statuses)}; 200s p50 "
          f"{accepted[len(accepted) // 2] * 1000:.0f} ms, p99 {p99_s * 1000:.0f} ms; peak RSS {rss:.0f} MiB")
    assert p99_s <= 2 * REQUEST_TIMEOUT_S, f"p99 of accepted requests {p99_s:.2f}s"
    assert rss < 1024
    metrics = httpx.get(busy_server.url + "/metrics").text
    assert re.search(r'^vaeserve_rejections_total\{reason="in_flight_limit"\} [1-9]', metrics, re.MULTILINE)
    assert httpx.post(busy_server.url + "/anomaly-score", content=ONE_ITEM,
                      headers={"content-type": "application/json"}).status_code == 200


def test_work_that_can_never_fit_gets_413_not_429(busy_server: ServerProcess) -> None:
    def npy(n: int) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, np.full((n, 784), 0.5, dtype=np.float32))
        return buffer.getvalue()

    url, headers = busy_server.url + "/anomaly-score?mc_samples=1024", {"content-type": "application/x-npy"}
    assert httpx.post(url, content=npy(8), headers=headers, timeout=30).status_code == 200  # measures the rate
    response = httpx.post(url, content=npy(1024), headers=headers, timeout=30)
    assert response.status_code == 413, response.text
    assert "1024 items of weight 64 would take" in response.json()["error"]  # weight: K / 16
    assert "retry-after" not in response.headers


@pytest.mark.parametrize("graph", ["scorer", "scorer_core"])
def test_v2_scorer_routes_apply_max_mc_samples(server: ServerProcess, graph: str) -> None:
    eps = np.zeros((1, 1025, 8), dtype=np.float32).tobytes()
    x = np.full((1, 784), 0.5, dtype=np.float32).tobytes()
    header = orjson.dumps({"inputs": [
        {"name": "x", "shape": [1, 784], "datatype": "FP32", "parameters": {"binary_data_size": len(x)}},
        {"name": "eps", "shape": [1, 1025, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(eps)}}]})
    response = httpx.post(f"{server.url}/v2/models/{graph}/infer", content=header + x + eps,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 422, response.text
    assert "1025 Monte Carlo samples (dimension k) exceed the limit of 1024 (max_mc_samples)" in response.json()["error"]


def test_sigterm_under_16_clients_answers_every_request_that_reached_the_server(
        artifacts_dir: Path, tmp_path: Path) -> None:
    server = start_server(artifacts_dir, tmp_path, shutdown_grace_s=1.0)
    outcomes: Counter[str] = Counter()
    closes_after_signal: list[bool] = []
    signalled_at: list[float] = []

    async def client() -> None:
        writer = None
        while True:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                except ConnectionRefusedError:  # the port is closed: nothing was sent, nothing lost
                    outcomes["refused"] += 1
                    return
            writer.write(request_bytes("/anomaly-score", ONE_ITEM))
            try:
                status, headers, _ = await asyncio.wait_for(read_answer(reader), 10)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                outcomes[f"lost: {type(exc).__name__}"] += 1  # sent, never answered
                return
            outcomes[str(status)] += 1
            if signalled_at and time.monotonic() > signalled_at[0] + 0.05:
                closes_after_signal.append(headers.get("connection") == "close")
            if headers.get("connection") == "close":
                writer.close()
                writer = None

    async def scenario() -> None:
        clients = [asyncio.create_task(client()) for _ in range(16)]
        await asyncio.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        signalled_at.append(time.monotonic())
        await asyncio.wait_for(asyncio.gather(*clients), 30)

    try:
        asyncio.run(scenario())
        server.process.wait(15)
    finally:
        server.stop()
    print(f"\nSIGTERM under 16 clients: {dict(outcomes)}")
    assert not [k for k in outcomes if k.startswith("lost")], outcomes
    assert outcomes["200"] > 0 and outcomes["503"] > 0 and outcomes["refused"] == 16, outcomes
    assert closes_after_signal and all(closes_after_signal), "an answer after SIGTERM kept the connection open"


# The admission rules in process.

def scope(*, received_s_ago: float = 0.0, method: str = "POST", path: str = "/encode") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": [],
            "extensions": {RECEIVED: {"monotonic_s": time.monotonic() - received_s_ago}}}


def test_admission_bounds_requests_in_flight_and_refuses_those_that_waited_too_long() -> None:
    in_flight = InFlight(Metrics())
    admission = Admission(in_flight, max_in_flight=2, request_timeout_s=4.0)
    admission.enter()
    admission.enter()
    with pytest.raises(ServerBusy) as third:  # refused at once: two are in flight
        admission.enter()
    assert third.value.status_code == 503 and third.value.headers == {"Retry-After": "1"}
    in_flight.leave()
    admission.enter()  # a place came free
    late = admission.waited_too_long(scope(received_s_ago=2.5))  # more than half the 4 s timeout
    assert late is not None and late.status_code == 503 and late.headers == {"Retry-After": "1"}
    assert admission.waited_too_long(scope(received_s_ago=1.5)) is None
    # The control plane and reads are never admitted or refused; model POSTs are.
    assert not Admission.applies(scope(path="/admin/reload"))
    assert not Admission.applies(scope(path="/v2/repository/models/m/load"))
    assert not Admission.applies(scope(method="GET", path="/model"))
    assert Admission.applies(scope()) and Admission.applies(scope(path="/v2/models/m/infer"))
