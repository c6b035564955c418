"""Findings of an outside probe of the running service, each against a real server: a small request
that froze the process, image formats the API never promised, a quota bypass, slow bodies that
locked everyone out, quotas that counted admin calls two ways, and a broken version never retried."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.load import healthz_latencies_during
from harness.servers import ServerProcess, start_server, wait_for_http

ONE = {"inputs": [[0.5] * 784]}


def png(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_a_request_of_huge_images_is_refused_from_their_headers_and_never_holds_the_process(
        server: ServerProcess) -> None:
    """Finding 1: 256 items of a 5.5 kB, 5792x5792 1-bit PNG held the server 43 s (/healthz waited 43.28 s)."""
    bomb = png(Image.new("1", (5792, 5792)))
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(server.url + "/anomaly-score", json={"inputs": [bomb] * 256}, timeout=120))

    started = time.perf_counter()
    latencies = healthz_latencies_during(server.url, threading.Thread(target=send))
    elapsed = time.perf_counter() - started
    assert answers[0].status_code == 413, answers[0].text
    assert "inputs[0]: a 5792x5792 image is larger than this 28x28 model accepts" in answers[0].json()["error"]
    assert elapsed < 5, f"refusing it took {elapsed:.1f}s"
    assert max(latencies) < 0.1, f"/healthz waited {max(latencies):.3f}s"


def test_images_within_the_budget_decode_off_the_event_loop_and_score(server: ServerProcess) -> None:
    """A request of many larger-than-model images is decoded on a worker thread: the loop stays free."""
    rng = np.random.default_rng(0)
    photo = png(Image.fromarray(rng.integers(0, 255, (112, 112), dtype=np.uint8), mode="L"))
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(server.url + "/anomaly-score", json={"inputs": [photo] * 256, "resize": True},
                                      timeout=120))

    latencies = healthz_latencies_during(server.url, threading.Thread(target=send))
    assert answers[0].status_code == 200, answers[0].text
    assert len(answers[0].json()["results"]) == 256
    assert max(latencies) < 0.1, f"/healthz waited {max(latencies):.3f}s while images decoded"


def test_too_many_pixels_in_one_request_is_413_naming_the_budget(server: ServerProcess) -> None:
    item = png(Image.new("L", (1000, 1000)))  # each item fits (1 Mpx), 8 of them do not (4 Mpx a request)
    answer = httpx.post(server.url + "/encode", json={"inputs": [item] * 8}, timeout=60)
    assert answer.status_code == 413 and "more pixels than it may decode" in answer.json()["error"]


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_only_png_and_jpeg_are_opened_whatever_pillow_could_read(server: ServerProcess, fmt: str) -> None:
    """Finding 2: GIF, BMP and TIFF were accepted where the API says PNG (and JPEG, added on purpose)."""
    item = png(Image.new("L", (28, 28), color=128), fmt)
    answer = httpx.post(server.url + "/encode", json={"inputs": [item]}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert "inputs[0]: not a valid base64-encoded PNG or JPEG image" in answer.json()["error"]
    jpeg = png(Image.new("L", (28, 28), color=128), "JPEG")
    assert httpx.post(server.url + "/encode", json={"inputs": [jpeg]}, timeout=30).status_code == 200


def test_an_eps_body_never_reaches_ghostscript(server: ServerProcess) -> None:
    """Finding 2: an EPS item reached Pillow's Ghostscript call (remote code execution where installed)."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n"
    answer = httpx.post(server.url + "/encode", json={"inputs": [base64.b64encode(eps).decode()]}, timeout=30)
    assert answer.status_code == 422 and "PNG" in answer.json()["error"]
    assert "0x" not in answer.json()["error"], "no object reprs (heap addresses) in answers"
    assert "ghostscript" not in server.log().lower()


@pytest.fixture(scope="module")
def quota_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    quotas = {"default": {"requests_per_s": 1, "burst_s": 1}}
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("hardening-quota"), api_keys='["user-key"]',
                        admin_api_keys='["admin-key"]', key_quotas=json.dumps(quotas))
    yield proc
    proc.stop()


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request over a bare socket, so headers can repeat; (status, body)."""
    async def run() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[1]

    return asyncio.run(run())


def test_two_authorization_headers_are_refused_so_the_quota_cannot_be_bypassed(quota_server: ServerProcess) -> None:
    """Finding 3: the key check read the last Authorization header and the quota the first: with a junk
    header first, a key limited to 1 req/s got 10 of 10 x 200."""
    body = json.dumps(ONE).encode()
    statuses = []
    for _ in range(10):
        head = (f"POST /encode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer junk\r\nAuthorization: Bearer user-key\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n")
        status, answer = raw_request(quota_server.port, head, body)
        statuses.append(status)
    assert statuses == [400] * 10, statuses
    assert b"Authorization: send it once" in answer
    with httpx.Client(base_url=quota_server.url, timeout=30) as client:  # one header: the quota holds
        one_key = [client.post("/encode", json=ONE, headers={"authorization": "Bearer user-key"}).status_code
                   for _ in range(5)]
    assert one_key.count(200) <= 2 and one_key.count(429) >= 3, one_key


def test_admin_calls_are_never_charged_to_a_quota_whichever_route(quota_server: ServerProcess,
                                                                  artifacts_dir: Path) -> None:
    """Finding 7: /admin/reload was free, v2 repository load and unload were charged (8 of 10 got 429)."""
    admin = {"authorization": "Bearer admin-key"}
    name = json.loads((artifacts_dir / "manifest.json").read_text())["model"]["name"]
    with httpx.Client(base_url=quota_server.url, timeout=60) as client:
        loads = [client.post(f"/v2/repository/models/{name}/load", headers=admin).status_code for _ in range(10)]
        reloads = [client.post("/admin/reload", headers=admin).status_code for _ in range(3)]
    assert loads == [200] * 10 and reloads == [200] * 3, (loads, reloads)


@pytest.fixture(scope="module")
def small_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("hardening-slots"), max_in_flight=16,
                        body_read_timeout_s=10)
    yield proc
    proc.stop()


def test_slow_bodies_never_take_the_in_flight_places_of_normal_requests(small_server: ServerProcess) -> None:
    """Finding 4: a request held an in-flight place from its headers until its 408, so 530 connections
    trickling 1 byte/s sent 68 of 74 normal requests to 503."""
    async def run() -> list[int]:
        trickling = []
        for _ in range(40):  # 2.5 x max_in_flight, each a body of 100 bytes that never completes
            reader, writer = await asyncio.open_connection("127.0.0.1", small_server.port)
            writer.write(b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            await writer.drain()
            trickling.append(writer)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=small_server.url, timeout=30) as client:
            answers = await asyncio.gather(*(client.post("/encode", json=ONE) for _ in range(12)))
        for writer in trickling:
            writer.close()
        return [a.status_code for a in answers]

    assert asyncio.run(run()) == [200] * 12


def test_the_in_flight_bound_still_sheds_requests_whose_bodies_arrived(small_server: ServerProcess) -> None:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=small_server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=200)) as client:
            big = {"inputs": [[0.5] * 784] * 64, "mc_samples": 64}
            answers = await asyncio.gather(*(client.post("/anomaly-score", json=big) for _ in range(120)))
        return [a.status_code for a in answers]

    statuses = asyncio.run(run())
    assert set(statuses) <= {200, 503, 429} and 200 in statuses, statuses
    metrics = httpx.get(small_server.url + "/metrics").text
    assert "vaeserve_in_flight_requests 0.0" in metrics, "every place taken was given back"


def test_a_failed_repository_version_is_retried_by_a_rescan_once_its_files_are_fixed(
        artifacts_dir: Path, tmp_path: Path) -> None:
    """Finding 8: after a failed checksum, fixing the file and SIGHUP or /admin/reload left it at 503."""
    version = tmp_path / "repo" / "tiny" / "1"
    shutil.copytree(artifacts_dir, version)
    encoder = version / "encoder.onnx"
    good = encoder.read_bytes()
    encoder.write_bytes(good[:200] + b"\xff\xfe\xfd" + good[203:])
    proc = start_server(version, tmp_path / "logs", model_repository=tmp_path / "repo", admin_api_keys='["admin-key"]',
                        wait_ready=False)
    try:
        wait_for_http(proc.url + "/healthz", proc.process, what="server", log_path=proc.log_path)
        deadline = time.monotonic() + 30
        while (refused := httpx.post(proc.url + "/encode", json=ONE, timeout=30)).status_code != 503 or (
                "corrupted" not in refused.text):
            assert time.monotonic() < deadline, refused.text  # the repository is still being read
            time.sleep(0.1)
        assert refused.status_code == 503 and "encoder.onnx is corrupted" in refused.json()["error"]
        encoder.write_bytes(good)
        proc.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (status := httpx.post(proc.url + "/encode", json=ONE, timeout=30).status_code) != 200:
            assert status == 503 and time.monotonic() < deadline, f"still {status} after SIGHUP"
            time.sleep(0.2)
        encoder.write_bytes(good[:200] + b"\xff\xfe\xfd" + good[203:])  # the same by /admin/reload
        shutil.copytree(version, tmp_path / "repo" / "tiny" / "2")
        reloaded = httpx.post(proc.url + "/admin/reload", headers={"authorization": "Bearer admin-key"}, timeout=60)
        assert reloaded.status_code == 200
        versions = {v["version"]: v for v in reloaded.json()["models"][0]["versions"]}
        assert versions["2"]["state"] == "failed" and versions["1"]["state"] == "ready", "1 keeps serving"
        encoder.write_bytes(good)
        (tmp_path / "repo" / "tiny" / "2" / "encoder.onnx").write_bytes(good)
        reloaded = httpx.post(proc.url + "/admin/reload", headers={"authorization": "Bearer admin-key"}, timeout=60)
        versions = {v["version"]: v for v in reloaded.json()["models"][0]["versions"]}
        assert versions["2"]["state"] == "ready", versions
        assert httpx.post(proc.url + "/encode", json=ONE, timeout=30).json()["model"]["version"] == "2"
    finally:
        proc.stop()
