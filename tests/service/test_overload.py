"""Overload on loopback: offered load >= 10x what the service sustains, bounded in time. Every
request is answered with 200 or 429/503 + Retry-After, none is dropped or hangs, memory stays
bounded, and the service is healthy and fast right after."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx
import numpy as np

from harness.servers import start_server

ITEMS, MC_SAMPLES = 32, 256  # heavy requests, so the server (not this client) is the bottleneck
REQUEST_TIMEOUT_S = 5.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_ten_times_overload_is_refused_cleanly_and_recovers(artifacts_dir: Path, tmp_path: Path) -> None:
    proc = start_server(artifacts_dir, tmp_path, request_timeout_s=REQUEST_TIMEOUT_S)
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).random((ITEMS, 784), dtype=np.float32))
    body, url = buffer.getvalue(), f"/anomaly-score?mc_samples={MC_SAMPLES}"
    headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}

    async def scenario() -> dict[str, object]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=proc.url, timeout=60, limits=limits) as client:
            start = time.monotonic()
            done = 0
            while time.monotonic() - start < 2.0:  # what one sequential client gets: the sustained rate
                assert (await client.post(url, content=body, headers=headers)).status_code == 200
                done += 1
            sustained = done / (time.monotonic() - start)
            offered, duration_s = 10 * sustained, 4.0
            tasks = []
            start = time.monotonic()

            async def timed_post() -> tuple[httpx.Response, float]:
                sent = time.monotonic()
                response = await client.post(url, content=body, headers=headers)
                return response, time.monotonic() - sent

            for i in range(int(offered * duration_s)):  # open loop: send on schedule, whatever comes back
                await asyncio.sleep(max(0.0, start + i / offered - time.monotonic()))
                tasks.append(asyncio.create_task(timed_post()))
            timed = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            recovery_start = time.monotonic()
            after = await client.post(url, content=body, headers=headers)
            recovery_s = time.monotonic() - recovery_start
        return {"sustained": sustained, "offered": offered, "timed": timed, "after": after, "recovery_s": recovery_s}

    try:
        result = asyncio.run(scenario())
        timed = result["timed"]
        assert all(isinstance(t, tuple) for t in timed), [t for t in timed if not isinstance(t, tuple)][:3]  # no socket errors
        responses = [response for response, _ in timed]
        accepted_s = sorted(seconds for response, seconds in timed if response.status_code == 200)
        p99_s = accepted_s[int(0.99 * (len(accepted_s) - 1))]
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429, 503}, {s: statuses.count(s) for s in set(statuses)}
        refused = [r for r in responses if r.status_code != 200]
        assert refused and all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert statuses.count(200) >= 1
        rss = peak_rss_mib(proc.process.pid)
        print(f"\nsustained {result['sustained']:.1f} req/s, offered {result['offered']:.1f} req/s for 4 s: "
              f"{statuses.count(200)} x 200 (p99 {p99_s:.2f} s), {len(refused)} refused with Retry-After, 0 dropped; "
              f"peak RSS {rss:.0f} MiB; first request after: {result['recovery_s'] * 1000:.0f} ms")
        assert rss < 1024, f"peak RSS {rss:.0f} MiB"
        assert p99_s <= 2 * REQUEST_TIMEOUT_S, f"p99 of the accepted requests {p99_s:.2f}s"
        assert result["after"].status_code == 200 and httpx.get(proc.url + "/readyz").status_code == 200
        assert result["recovery_s"] < 5 / result["sustained"] + 1.0, "the service is slow after the overload"
    finally:
        proc.stop()
