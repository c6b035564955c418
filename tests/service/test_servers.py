"""`--server granian` and `--workers N` against real servers: what a single uvicorn process guarantees
(413, 503 + Retry-After at the door, SIGTERM drained in order) holds there too, and N workers count
every request once in /metrics and stop together."""

from __future__ import annotations

import io
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from harness.servers import ServerProcess, start_server

pytestmark = pytest.mark.slow
NPY = {"content-type": "application/x-npy"}


def npy(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x.astype(np.float32))
    return buffer.getvalue()


def queued_items(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(v) for v in re.findall(r"^vaeserve_queue_depth_items\{.*\} (\S+)$", text, re.MULTILINE))


def test_granian_refuses_at_the_door_and_drains_on_sigterm_like_uvicorn(
        artifacts_dir: Path, tmp_path: Path, test_images: np.ndarray) -> None:
    pytest.importorskip("granian")
    # One request in flight at most; a lone batch waits 1.5 s, so the accepted one is queued at SIGTERM.
    server = start_server(artifacts_dir, tmp_path, server="granian", max_in_flight=1, max_body_bytes=4096,
                          batch_wait_timeout_s=1.5, batch_wait_when_idle=True, max_batch_size=1024,
                          shutdown_grace_s=1.0)
    accepted: dict[str, object] = {}

    def post_accepted() -> None:
        response = httpx.post(f"{server.url}/anomaly-score?mc_samples=1", content=npy(test_images[:1]),
                              headers=NPY, timeout=30)
        accepted.update(status=response.status_code, body=response.json())

    try:
        too_big = httpx.post(f"{server.url}/encode", json={"inputs": test_images[:2].tolist()})
        assert too_big.status_code == 413 and too_big.headers["server"] == "granian", too_big.text
        assert too_big.json()["error_type"] == "payload_too_large"
        thread = threading.Thread(target=post_accepted)
        thread.start()
        deadline = time.monotonic() + 5
        while queued_items(server) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = httpx.post(f"{server.url}/anomaly-score", content=npy(test_images[:1]), headers=NPY)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        assert busy.json()["error_type"] == "overloaded"
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and ready.headers["connection"] == "close"
        thread.join(10)
        assert accepted.get("status") == 200 and len(accepted["body"]["results"]) == 1, accepted  # type: ignore[index]
        server.process.wait(10)
        stopped_s = time.monotonic() - signalled
    finally:
        server.stop()
    assert server.process.returncode == -signal.SIGTERM
    assert 1.0 <= stopped_s < 4.0, f"stopped {stopped_s:.2f}s after SIGTERM with a 1 s grace period"
    log = server.log()
    assert "SIGTERM: readiness 503, refusing new requests, 1 in flight" in log, log
    assert "shutdown: queues drained" in log, log


def per_worker_requests(metrics_dir: Path, endpoint: str) -> dict[int, float]:
    """vaeserve_requests_total{endpoint} as each worker's own file holds it, by pid."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[int(path.stem.split("_")[1])] = sum(
            s.value for m in merged if m.name == "vaeserve_requests" for s in m.samples
            if s.name == "vaeserve_requests_total" and s.labels["endpoint"] == endpoint)
    return counts


def test_two_workers_share_the_port_count_every_request_once_and_stop_together(
        artifacts_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_images: np.ndarray) -> None:
    metrics_dir = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))  # where the test can read each worker's files
    server = start_server(artifacts_dir, tmp_path, workers=2, shutdown_grace_s=0.5)
    n = 40
    try:
        deadline = time.monotonic() + 60  # both workers ready: vaeserve_ready is the minimum over live workers
        while time.monotonic() < deadline and not (
                len(list(metrics_dir.glob("gauge_livemin_*.db"))) == 2
                and "vaeserve_ready 1.0" in httpx.get(f"{server.url}/metrics").text):
            time.sleep(0.1)
        body = npy(test_images[:1])
        statuses = [httpx.post(f"{server.url}/anomaly-score", content=body, headers=NPY).status_code
                    for _ in range(n)]  # a new connection each: the kernel picks a worker for each
        assert statuses == [200] * n, statuses
        for _ in range(6):  # whichever worker answers the scrape
            text = httpx.get(f"{server.url}/metrics").text
            total = re.search(r'^vaeserve_requests_total\{endpoint="/anomaly-score",status="200"\} (\S+)$', text,
                              re.MULTILINE)
            assert total and float(total.group(1)) == n, text
        by_worker = per_worker_requests(metrics_dir, "/anomaly-score")
        assert len(by_worker) == 2 and all(c > 0 for c in by_worker.values()), by_worker
        assert sum(by_worker.values()) == n
    finally:
        server.stop()
    assert server.process.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in by_worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in by_worker if Path(f"/proc/{pid}").exists()], "a worker outlived SIGTERM"
    log = server.log()
    assert log.count("shutdown: queues drained") == 2, log
