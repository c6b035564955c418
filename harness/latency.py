"""Online single-item latency beside a bulk job: shared by tests/service/test_jobs.py and
benchmarks/job_latency.py."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np


def single_item_latencies(url: str, items: np.ndarray, *, requests: int, gap_s: float = 0.0) -> np.ndarray:
    """Seconds per /anomaly-score request of one item, one at a time on one connection (gap_s apart)."""
    out = np.empty(requests)
    with httpx.Client(timeout=30) as client:
        client.post(url + "/anomaly-score", json={"inputs": items[:1].tolist()})  # connect, warm
        for i in range(requests):
            body = {"inputs": items[i % len(items):i % len(items) + 1].tolist()}
            start = time.perf_counter()
            response = client.post(url + "/anomaly-score", json=body)
            out[i] = time.perf_counter() - start
            assert response.status_code == 200, response.text
            if gap_s:
                time.sleep(gap_s)
    return out


def upload_job(url: str, path: str, **options: Any) -> dict:
    """POST /jobs with the file as the body (the client's submit_job); the 202 answer."""
    from service.client import VAEClient

    with VAEClient(url, max_retries=0) as client:
        return client.submit_job(path, **options)


def wait_for_job(url: str, job_id: str, *, timeout_s: float = 600,
                 until: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> dict:
    """The client's wait_for_job, polling every 0.2 s."""
    from service.client import VAEClient

    with VAEClient(url) as client:
        return client.wait_for_job(job_id, timeout_s=timeout_s, poll_s=0.2, until=until)
