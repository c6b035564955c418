"""The hardening probe's figures against a real server on 127.0.0.1 (docs/operations.md, "Limits").

    .venv/bin/python benchmarks/hardening_probe.py --artifacts artifacts [--only freeze slow-bodies ...]

  freeze        256 items of a 5.5 kB, 5792x5792 1-bit PNG in one request (a 1.42 MB body), with
                /healthz polled meanwhile: the answer, how long it took, /healthz's worst latency
  slow-bodies   600 connections trickling a body at 1 byte/s, then 74 normal requests: their statuses
  slow-headers  200 connections sending their headers at 1 byte/s: how long until the server closed them
  overload      1,000 connections of single-item /anomaly-score (wrk, 10 s): statuses, and whether
                every 503/429 carried Retry-After

Each runs against a fresh server with the defaults (the probe's settings), one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.load import healthz_latencies_during  # noqa: E402
from harness.servers import ServerProcess, start_server  # noqa: E402

ITEM = json.dumps({"inputs": [[0.5] * 784], "mc_samples": 1}).encode()
WRK_TALLY = """
ok, busy, quota, other, missing = 0, 0, 0, 0, 0
function response(status, headers, body)
  if status == 200 then ok = ok + 1 elseif status == 503 then busy = busy + 1
  elseif status == 429 then quota = quota + 1 else other = other + 1 end
  if (status == 503 or status == 429) and headers["Retry-After"] == nil and headers["retry-after"] == nil then
    missing = missing + 1
  end
end
threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("TALLY 200=%d 503=%d 429=%d other=%d without_retry_after=%d\\n",
      t:get("ok"), t:get("busy"), t:get("quota"), t:get("other"), t:get("missing")))
  end
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = 'ITEM_BODY'
"""


def freeze(server: ServerProcess) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (5792, 5792)).save(buffer, format="PNG")
    item = base64.b64encode(buffer.getvalue()).decode()
    answers: list[tuple[int, float]] = []

    def send() -> None:
        start = time.perf_counter()
        status = httpx.post(server.url + "/anomaly-score", json={"inputs": [item] * 256}, timeout=300).status_code
        answers.append((status, time.perf_counter() - start))

    latencies = healthz_latencies_during(server.url, threading.Thread(target=send))
    status, seconds = answers[0]
    return (f"freeze: {len(buffer.getvalue())} B PNG x 256 -> {status} in {seconds * 1000:.0f} ms; /healthz x "
            f"{len(latencies)}, worst {max(latencies) * 1000:.1f} ms")


async def _slow_bodies(server: ServerProcess, connections: int, normal: int) -> str:
    trickling = []
    for _ in range(connections):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /anomaly-score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        trickling.append(writer)
    await asyncio.sleep(1.0)
    for writer in trickling:  # 1 byte a second from here on, for as long as the normal requests run
        writer.write(b" ")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        answers = await asyncio.gather(*(client.post("/anomaly-score", content=ITEM,
                                                     headers={"content-type": "application/json"})
                                         for _ in range(normal)), return_exceptions=True)
    for writer in trickling:
        writer.close()
    statuses: dict[str, int] = {}
    for answer in answers:
        key = str(answer.status_code) if isinstance(answer, httpx.Response) else type(answer).__name__
        statuses[key] = statuses.get(key, 0) + 1
    return f"slow-bodies: {connections} trickling, {normal} normal requests -> {statuses}"


async def _slow_headers(server: ServerProcess, connections: int, limit_s: float) -> str:
    async def one() -> float | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        for byte in head:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                closed = await asyncio.wait_for(reader.read(1 << 16), 1.0)
            except asyncio.TimeoutError:
                if time.monotonic() - start > limit_s:
                    writer.close()
                    return None
                continue
            except (ConnectionError, OSError):
                return time.monotonic() - start
            if closed == b"" or closed:
                writer.close()
                return time.monotonic() - start
        return None

    closed = await asyncio.gather(*(one() for _ in range(connections)))
    done = [c for c in closed if c is not None]
    worst = f", the last after {max(done):.1f} s" if done else ""
    return f"slow-headers: {len(done)} of {connections} closed by the server within {limit_s:.0f} s{worst}"


def overload(server: ServerProcess, connections: int = 1000, duration_s: int = 10) -> str:
    if shutil.which("wrk") is None:
        return "overload: skipped (wrk is not installed)"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_TALLY.replace("ITEM_BODY", ITEM.decode()))
    result = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "30s", "-s",
                             script.name, server.url + "/anomaly-score"], capture_output=True, text=True)
    tally = next((line for line in result.stdout.splitlines() if line.startswith("TALLY")), result.stdout[-500:])
    errors = next((line.strip() for line in result.stdout.splitlines() if "Socket errors" in line), "no socket errors")
    return f"overload: {connections} connections, {duration_s} s -> {tally[6:]}; {errors}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--only", nargs="*", default=["freeze", "slow-bodies", "slow-headers", "overload"])
    args = parser.parse_args()
    probes = {
        "freeze": freeze,
        "slow-bodies": lambda s: asyncio.run(_slow_bodies(s, 600, 74)),
        "slow-headers": lambda s: asyncio.run(_slow_headers(s, 200, 30.0)),
        "overload": overload,
    }
    with tempfile.TemporaryDirectory() as logs:
        for name in args.only:
            server = start_server(args.artifacts, Path(logs) / name)
            try:
                print(probes[name](server), flush=True)
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
