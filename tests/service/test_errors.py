"""Bad input gets a 4xx naming the problem, overload gets 429 with Retry-After, nothing gets a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, start_server

GOOD = [0.5] * 784
BAD_REQUESTS = [
    ("/anomaly-score", {}, 422, "inputs: field required"),
    ("/anomaly-score", {"inputs": [GOOD], "mc_samples": 0}, 422, "mc_samples"),
    ("/anomaly-score", {"inputs": [GOOD], "mc_samples": 100000}, 422, "mc_samples: 100000 exceeds"),
    ("/anomaly-score", {"inputs": [GOOD], "score": "magic"}, 422, "score"),
    ("/anomaly-score", {"inputs": [GOOD], "target_fpr": 1.5}, 422, "target_fpr"),
    ("/anomaly-score", {"inputs": [GOOD], "target_fpr": 0.1, "contamination": 0.1}, 422, "at most one"),
    ("/anomaly-score", {"inputs": [GOOD], "unknown": 1}, 422, "unknown"),
    ("/anomaly-score", {"inputs": [GOOD, GOOD[:-1]]}, 422, "inputs[1]"),
    ("/anomaly-score", {"inputs": [[2.0] * 784]}, 422, "inputs[0]: values must be in [0, 1]"),
    ("/anomaly-score", {"inputs": [[1e39] * 784]}, 422, "out-of-float32-range"),
    ("/anomaly-score", {"inputs": "abc"}, 422, "non-empty list"),
    ("/anomaly-score", {"inputs": [GOOD] * 17}, 413, "17 items exceed the limit of 16"),
    ("/encode", {"inputs": [GOOD], "seed": -1}, 422, "seed"),
    ("/encode", {"inputs": [["a"] * 784]}, 422, "every value must be a number"),
    ("/reconstruct", {"inputs": [[True] * 784]}, 422, "every value must be a number"),
    ("/sample", {"n": 0}, 422, "n: Input should be greater than or equal to 1"),
    ("/sample", {"n": 5000}, 413, "n: 5000 exceeds"),
    ("/sample", {"temperature": "hot"}, 422, "temperature"),
    ("/interpolate", {"z_start": [0.0] * 8}, 422, "end: give exactly one"),
    ("/interpolate", {"z_start": [0.0] * 8, "z_end": [0.0] * 7}, 422, "z_end: must be a list of 8 numbers"),
    ("/interpolate", {"start": GOOD, "z_start": [0.0] * 8, "z_end": [0.0] * 8}, 422, "start: give exactly one"),
    ("/interpolate", {"z_start": [0.0] * 8, "z_end": [0.0] * 8, "steps": 1}, 422, "steps"),
    ("/interpolate", {"z_start": [0.0] * 8, "z_end": [0.0] * 8, "method": "cubic"}, 422, "method"),
]


@pytest.fixture(scope="module")
def strict_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Small limits and a slow-to-flush batcher, so limits and overload are reachable."""
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("strict"), max_items_per_request=16, max_queue_items=8,
                        max_batch_size=4, batch_wait_timeout_s=0.2, max_body_bytes=200_000, max_sample_n=1024)
    yield proc
    proc.stop()


@pytest.mark.parametrize("path,body,status,message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_naming_the_problem(strict_server: ServerProcess, path: str, body: dict,  # type: ignore[type-arg]
                                                   status: int, message: str) -> None:
    response = httpx.post(strict_server.url + path, json=body, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert response.json()["error_type"]


@pytest.mark.parametrize("content,headers,status,message", [
    (b"{not json", {"content-type": "application/json"}, 400, "not valid JSON"),
    (b'{"inputs": NaN}', {"content-type": "application/json"}, 400, "not valid JSON"),
    (b"[1, 2]", {"content-type": "application/json"}, 422, "JSON object"),
    (b"inputs=1", {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    (b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"}, 400, "not valid JSON"),
    (b'{"inputs": [' + b"0.5," * 60000 + b"0.5]}", {"content-type": "application/json"}, 413, "exceeds the limit"),
])
def test_malformed_bodies_are_refused_plainly(strict_server: ServerProcess, content: bytes, headers: dict,  # type: ignore[type-arg]
                                              status: int, message: str) -> None:
    response = httpx.post(strict_server.url + "/anomaly-score", content=content, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_unknown_route_and_method_use_the_error_shape(strict_server: ServerProcess) -> None:
    missing = httpx.get(strict_server.url + "/nope")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"
    wrong = httpx.get(strict_server.url + "/anomaly-score")
    assert wrong.status_code == 405 and wrong.json()["error_type"] == "method_not_allowed"


def test_a_full_queue_answers_429_with_retry_after_and_loses_nothing(strict_server: ServerProcess) -> None:
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=strict_server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/anomaly-score", json={"inputs": [GOOD] * 4}) for _ in range(40)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) >= 2
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error_type"] == "overloaded"
        else:
            assert len(r.json()["results"]) == 4
    metrics = httpx.get(strict_server.url + "/metrics").text
    assert 'vaeserve_rejections_total{reason="queue_full"}' in metrics


def test_missing_artifacts_leave_the_service_alive_but_not_ready(tmp_path: Path) -> None:
    proc = start_server(tmp_path / "no-artifacts", tmp_path, wait_ready=False)
    try:
        from harness.servers import wait_until_ready

        wait_until_ready(proc, path="/healthz", timeout_s=60)
        ready = httpx.get(proc.url + "/readyz")
        assert ready.status_code == 503 and "manifest.json" in ready.json()["error"]
        refused = httpx.post(proc.url + "/sample", json={"n": 1})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    finally:
        proc.stop()


def test_torchscript_backend_serves_the_same_numbers(artifacts_dir: Path, tmp_path: Path, server: ServerProcess) -> None:
    proc = start_server(artifacts_dir, tmp_path, backend="torchscript")
    try:
        body = {"inputs": [GOOD, [0.1] * 784], "mc_samples": 4, "seed": 5}
        ts = httpx.post(proc.url + "/anomaly-score", json=body, timeout=30).json()
        ort = httpx.post(server.url + "/anomaly-score", json=body, timeout=30).json()
        assert httpx.get(proc.url + "/model").json()["backend"] == "torchscript"
        for a, b in zip(ts["results"], ort["results"]):
            assert a["score"] == pytest.approx(b["score"], rel=1e-5)
    finally:
        proc.stop()
