"""The server bounds what a connection may cost before its request reaches the app: the head's size
(431), the time to send it (408), an idle connection's lifetime (the keep-alive timeout), and running
out of file descriptors (a warning, not a traceback per failed accept); against a real server."""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from harness.servers import ServerProcess, start_server

HEADER_TIMEOUT_S = 1.0
KEEP_ALIVE_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 64 * 1024
SLACK_S = 1.0
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: one-byte-a-second\r\n\r\n"


@dataclass
class BoundedServer(ServerProcess):
    kind: str = "uvicorn"


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def bounded_server(request: pytest.FixtureRequest, artifacts_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoundedServer]:
    """Short timeouts so each bound is reached in about a second; under both servers."""
    started = start_server(artifacts_dir, tmp_path_factory.mktemp("bounded"), server=request.param,
                           header_timeout_s=HEADER_TIMEOUT_S, keep_alive_timeout_s=KEEP_ALIVE_TIMEOUT_S,
                           max_header_bytes=MAX_HEADER_BYTES)
    proc = BoundedServer(**vars(started), kind=request.param)
    yield proc
    proc.stop()


def until_closed(sock: socket.socket, limit_s: float) -> tuple[float | None, bytes]:
    """Read until the server closes the connection: (seconds it took, or None past limit_s; what came)."""
    start, got = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return None, got
    except ConnectionResetError:
        pass
    return time.monotonic() - start, got


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_a_head_sent_one_byte_a_second_is_closed_after_header_timeout_s(bounded_server: BoundedServer) -> None:
    connections, limit_s = 50, HEADER_TIMEOUT_S + SLACK_S

    async def slow_client() -> tuple[float | None, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", bounded_server.port)
        start = time.monotonic()

        async def trickle() -> None:
            for byte in SLOW_HEAD:
                writer.write(bytes([byte]))
                await asyncio.sleep(1.0)

        sender = asyncio.create_task(trickle())
        try:
            got = await asyncio.wait_for(reader.read(), limit_s + 2)
            return time.monotonic() - start, got
        except (TimeoutError, ConnectionResetError):
            return None, b""
        finally:
            sender.cancel()
            writer.close()

    async def all_clients() -> list[tuple[float | None, bytes]]:
        return await asyncio.gather(*(slow_client() for _ in range(connections)))

    results = asyncio.run(all_clients())
    closed = sorted(s for s, _ in results if s is not None)
    print(f"\n{connections} heads at 1 byte/s, header_timeout_s={HEADER_TIMEOUT_S}: {len(closed)} closed, "
          f"the last after {max(closed, default=float('nan')):.2f}s")
    assert len(closed) == connections, f"{connections - len(closed)} slow heads still open after {limit_s + 2}s"
    assert max(closed) <= limit_s
    assert min(closed) >= HEADER_TIMEOUT_S - 0.1
    # uvicorn answers 408; Granian (hyper) closes without an answer.
    assert {status_of(got) for _, got in results} == ({408} if bounded_server.kind == "uvicorn" else {0})


def test_a_head_over_max_header_bytes_gets_431_at_once_and_the_server_stays_responsive(
        bounded_server: BoundedServer) -> None:
    probes: list[float] = []
    stop = threading.Event()

    def probe_healthz() -> None:
        with httpx.Client(base_url=bounded_server.url, timeout=5) as client:
            while not stop.is_set():
                sent = time.monotonic()
                assert client.get("/healthz").status_code == 200
                probes.append(time.monotonic() - sent)
                time.sleep(0.005)

    prober = threading.Thread(target=probe_healthz)
    prober.start()
    try:
        time.sleep(0.2)
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", bounded_server.port)) as sock:
                sent = time.monotonic()
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
                seconds, answer = until_closed(sock, 10)
                assert status_of(answer) == 431, answer[:200]
                assert b"connection: close" in answer.lower()
                assert time.monotonic() - sent < 1.0
        time.sleep(0.2)
    finally:
        stop.set()
        prober.join()
    print(f"\n/healthz during five 1 MB heads: {len(probes)} probes, slowest {max(probes) * 1000:.1f} ms")
    assert probes and max(probes) < 0.1
    if bounded_server.kind == "uvicorn":  # Granian's refusals never reach the app
        metrics = httpx.get(bounded_server.url + "/metrics").text
        assert re.search(r'^vaeserve_rejections_total\{reason="header_too_large"\} [5-9]', metrics, re.MULTILINE)


def test_heads_under_the_limit_and_large_bodies_are_served(bounded_server: BoundedServer) -> None:
    near_limit = "a" * (MAX_HEADER_BYTES - 2048)
    assert httpx.get(bounded_server.url + "/healthz", headers={"x-big": near_limit}).status_code == 200
    # The body counts against max_body_bytes, not the head's limit, even when both arrive in one segment.
    body = orjson.dumps({"inputs": [[0.5] * 784] * 60, "mc_samples": 1})
    assert len(body) > 2 * MAX_HEADER_BYTES
    with socket.create_connection(("127.0.0.1", bounded_server.port)) as sock:
        sock.sendall(b"POST /anomaly-score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        _, answer = until_closed(sock, 10)
    assert status_of(answer) == 200, answer[:300]


def test_idle_connections_are_closed_after_the_keep_alive_timeout(bounded_server: BoundedServer) -> None:
    limit_s = KEEP_ALIVE_TIMEOUT_S + SLACK_S
    with socket.create_connection(("127.0.0.1", bounded_server.port)) as silent:
        silent_s, got = until_closed(silent, limit_s)
    assert silent_s is not None and got == b"", "a connection that never sent a byte is still open"
    with socket.create_connection(("127.0.0.1", bounded_server.port)) as after_answer:
        after_answer.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(after_answer.recv(65536)) == 200
        idle_s, _ = until_closed(after_answer, limit_s)
    print(f"\nkeep_alive_timeout_s={KEEP_ALIVE_TIMEOUT_S}: a connection that never sent a byte closed after "
          f"{silent_s:.2f}s, one idle after an answer after {idle_s}s")
    assert idle_s is not None and KEEP_ALIVE_TIMEOUT_S - 0.1 <= idle_s <= limit_s
    assert KEEP_ALIVE_TIMEOUT_S - 0.1 <= silent_s <= limit_s


def test_running_out_of_descriptors_logs_a_warning_not_a_traceback_per_accept(
        artifacts_dir: Path, tmp_path: Path) -> None:
    server = start_server(artifacts_dir, tmp_path, keep_alive_timeout_s=30, header_timeout_s=30)
    clients: list[socket.socket] = []
    try:
        pid = server.process.pid
        in_use = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 16, hard))
        log_before = len(server.log())
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(80)]  # the kernel queues them
        time.sleep(3.0)  # the server accepts 16, then every accept fails
        with pytest.raises(httpx.TimeoutException):
            httpx.get(server.url + "/healthz", timeout=0.5)
        log = server.log()[log_before:]
        for sock in clients:
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(server.url + "/healthz", timeout=1).status_code == 200
                break
            except httpx.TimeoutException:
                assert time.monotonic() < deadline, "not serving 10 s after the descriptors came back"
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        for sock in clients:
            sock.close()
        server.stop()
    lines = [line for line in log.splitlines() if line.strip()]
    print(f"\n{len(lines)} log lines while out of descriptors for 3 s: {lines[:3]}")
    assert "Traceback" not in log
    assert 1 <= len(lines) <= 2, lines[:5]
    assert "descriptors" in lines[0]
    assert re.search(r'^vaeserve_accept_errors_total\{reason="EMFILE"\} [1-9]', metrics, re.MULTILINE)
