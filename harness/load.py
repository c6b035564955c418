"""Client load for tests and benchmarks: loops of requests, tallied by status and model version."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx

ITEM = {"inputs": [[0.5] * 784], "mc_samples": 4}


async def clients_until_version(url: str, version: str, *, clients: int, timeout_s: float) -> dict[str, int]:
    """`clients` loops of /anomaly-score until one is answered by `version`; statuses and versions seen."""
    seen: dict[str, int] = {}
    done = asyncio.Event()

    async def one(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            try:
                answer = await client.post(url + "/anomaly-score", json=ITEM)
            except httpx.TransportError:
                seen["transport_error"] = seen.get("transport_error", 0) + 1
                continue
            key = f"{answer.status_code} v{answer.json()['model']['version']}" if answer.status_code == 200 else str(
                answer.status_code)
            seen[key] = seen.get(key, 0) + 1
            if key == f"200 v{version}" and seen[key] >= 20:
                done.set()

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.wait_for(asyncio.gather(*(one(client) for _ in range(clients))), timeout_s)
    return seen


def first_answer(url: str, *, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> httpx.Response:
    """POST ITEM to /anomaly-score until it is answered 200 (connection refused while a server starts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert alive(), "the server's process ended before it answered"
        try:
            answer = httpx.post(url + "/anomaly-score", json=ITEM, timeout=5)
            if answer.status_code == 200:
                return answer
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"no 200 from {url}/anomaly-score within {timeout_s:.0f} s"
        time.sleep(0.2)


def healthz_latencies_during(url: str, work: threading.Thread) -> list[float]:
    """/healthz round trips, one after another, for as long as `work` (started here) runs."""
    latencies = []
    with httpx.Client(timeout=300) as client:
        work.start()
        while work.is_alive():
            start = time.perf_counter()
            assert client.get(url + "/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.005)
    work.join()
    return latencies
