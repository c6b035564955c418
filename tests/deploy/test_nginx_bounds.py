"""What deploy/nginx's template bounds before a request reaches a replica: the size of the request head
and the time to send it; Debian's nginx on 127.0.0.1 in front of one real replica."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.peers import NGINX_TEMPLATE, Nginx, start_nginx, start_replicas

SLACK_S = 1.5


def template_seconds(directive: str) -> float:
    match = re.search(rf"^\s*{directive} (\d+)s;", NGINX_TEMPLATE.read_text(), re.MULTILINE)
    assert match, f"{NGINX_TEMPLATE} sets no {directive}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def balancer(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    tmp = tmp_path_factory.mktemp("nginx-bounds")
    replicas = start_replicas(artifacts_dir, tmp / "replicas", 1)
    nginx = start_nginx(tmp / "nginx", [replicas[0].port])
    yield nginx
    nginx.stop()
    replicas[0].stop()


def answer_to(nginx: Nginx, head: bytes) -> int:
    """The status nginx answers to one raw request head."""
    host, port = nginx.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head)
        sock.settimeout(10)
        first = sock.recv(64)
    return int(first.split(b" ", 2)[1])


def test_nginx_refuses_a_request_head_over_its_buffers(balancer: Nginx) -> None:
    def head(*lines: bytes, path: bytes = b"/readyz") -> bytes:
        return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(b"%s\r\n" % line for line in lines) + b"\r\n"

    assert answer_to(balancer, head(b"X-A: " + b"a" * 12_000)) == 200  # passed on to the replica
    assert answer_to(balancer, head(b"X-A: " + b"a" * 20_000)) == 400  # one line over a 16 KiB buffer
    assert answer_to(balancer, head(*(b"X-%d: " % i + b"a" * 15_000 for i in range(5)))) == 400  # 75 KiB in all
    assert answer_to(balancer, head(b"X-A: " + b"a" * 1_000_000)) == 400
    assert answer_to(balancer, head(path=b"/readyz?" + b"q" * 20_000)) == 414


def test_nginx_closes_heads_sent_one_byte_a_second(balancer: Nginx) -> None:
    timeout_s, connections = template_seconds("client_header_timeout"), 20
    host, port = balancer.url.removeprefix("http://").split(":")

    async def slow_client() -> float | None:
        reader, writer = await asyncio.open_connection(host, int(port))
        start = time.monotonic()

        async def trickle() -> None:
            for byte in b"GET /readyz HTTP/1.1\r\nHost: x\r\nUser-Agent: one-byte-a-second\r\n\r\n":
                writer.write(bytes([byte]))
                await asyncio.sleep(1.0)

        sender = asyncio.create_task(trickle())
        try:
            await asyncio.wait_for(reader.read(), timeout_s + SLACK_S + 2)
            return time.monotonic() - start
        except (TimeoutError, ConnectionResetError):
            return None
        finally:
            sender.cancel()
            writer.close()

    async def all_clients() -> list[float | None]:
        return await asyncio.gather(*(slow_client() for _ in range(connections)))

    closed = [s for s in asyncio.run(all_clients()) if s is not None]
    print(f"\n{connections} heads at 1 byte/s through nginx: {len(closed)} closed, the last after "
          f"{max(closed, default=float('nan')):.2f}s (client_header_timeout {timeout_s:g}s)")
    assert len(closed) == connections
    assert timeout_s - 0.5 <= min(closed) and max(closed) <= timeout_s + SLACK_S
