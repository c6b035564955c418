"""Client load for tests and benchmarks: loops of requests, tallied by status and model version."""

from __future__ import annotations

import asyncio

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
