"""Online single-item latency beside a bulk job: shared by tests/service/test_jobs.py and
benchmarks/job_latency.py."""

from __future__ import annotations

import time

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


def upload_job(url: str, path: str, *, timeout_s: float = 300, **options: object) -> dict:
    """POST /jobs with the file as the body; the 202 answer."""
    params = {"filename": path.rsplit("/", 1)[-1], **{k: str(v) for k, v in options.items()}}
    with open(path, "rb") as handle:
        response = httpx.post(url + "/jobs", params=params, content=handle.read(), timeout=timeout_s,
                              headers={"content-type": "application/octet-stream"})
    assert response.status_code == 202, response.text
    return dict(response.json())


def wait_for_job(url: str, job_id: str, *, timeout_s: float = 600, until: tuple[str, ...] = ("succeeded", "failed",
                                                                                            "cancelled")) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = dict(httpx.get(f"{url}/jobs/{job_id}", timeout=30).json())
        if job["state"] in until:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not {until} within {timeout_s}s")
