"""API keys, CORS, artifact faults at start and at reload, and hot reload under load."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, start_server, wait_until_ready

GOOD = {"inputs": [[0.5] * 784]}
KEYS = {"api_keys": '["alpha-key", "beta-key"]', "admin_api_keys": '["admin-key"]'}


@pytest.fixture(scope="module")
def artifacts_v2(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vaeserve.cli import main

    out = tmp_path_factory.mktemp("artifacts-v2")
    assert main(["export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(out), "--name", "tiny-vae",
                 "--version", "2"]) == 0
    return out


def broken_copies(source: Path, root: Path) -> dict[str, Path]:
    """Artifacts broken in each way an operator meets: truncated, corrupted, missing, wrong schema."""
    cases = {}
    for case in ("truncated", "corrupted", "missing", "wrong-schema"):
        target = root / case
        shutil.copytree(source, target)
        cases[case] = target
    onnx = cases["truncated"] / "scorer.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with (cases["corrupted"] / "encoder.onnx").open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\xff\xfe\xfd")
    (cases["missing"] / "decoder.onnx").unlink()
    manifest = json.loads((cases["wrong-schema"] / "manifest.json").read_text())
    (cases["wrong-schema"] / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 0}))
    return cases


EXPECTED = {"truncated": "scorer.onnx is corrupted", "corrupted": "encoder.onnx is corrupted",
            "missing": "decoder.onnx is missing", "wrong-schema": "schema_version 0"}


@pytest.fixture(scope="module")
def keyed_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("keyed"), **KEYS)
    yield proc
    proc.stop()


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_api_keys_guard_the_model_routes_but_not_the_probes(keyed_server: ServerProcess) -> None:
    url = keyed_server.url
    missing = httpx.post(url + "/anomaly-score", json=GOOD)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url + "/anomaly-score", json=GOOD, headers=auth("wrong")).status_code == 401
    assert httpx.post(url + "/anomaly-score", json=GOOD, headers={"authorization": "Basic alpha-key"}).status_code == 401
    for key in ("alpha-key", "beta-key"):
        assert httpx.post(url + "/anomaly-score", json=GOOD, headers=auth(key)).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
        assert httpx.get(url + path).status_code == 200, path
    assert httpx.get(url + "/model").status_code == 401
    assert httpx.post(url + "/admin/reload", headers=auth("alpha-key")).status_code == 401, "API keys are not admin keys"


def test_admin_routes_are_off_without_admin_keys_and_cors_is_off_by_default(server: ServerProcess) -> None:
    refused = httpx.post(server.url + "/admin/reload")
    assert refused.status_code == 403 and "VAESERVE_ADMIN_API_KEYS" in refused.json()["error"]
    response = httpx.post(server.url + "/sample", json={"n": 1}, headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_when_configured(artifacts_dir: Path, tmp_path: Path) -> None:
    proc = start_server(artifacts_dir, tmp_path, cors_allow_origins='["http://dash.example"]')
    try:
        ok = httpx.options(proc.url + "/sample", headers={"origin": "http://dash.example",
                                                          "access-control-request-method": "POST"})
        assert ok.headers["access-control-allow-origin"] == "http://dash.example"
        other = httpx.post(proc.url + "/sample", json={"n": 1}, headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        proc.stop()


@pytest.mark.parametrize("case", list(EXPECTED))
def test_broken_artifacts_at_start_leave_the_service_not_ready_with_the_reason(artifacts_dir: Path, tmp_path: Path,
                                                                               case: str) -> None:
    target = broken_copies(artifacts_dir, tmp_path)[case]
    proc = start_server(target, tmp_path, wait_ready=False)
    try:
        wait_until_ready(proc, path="/healthz")
        deadline = time.monotonic() + 30
        while "not ready: loading" in (body := httpx.get(proc.url + "/readyz").text) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert EXPECTED[case] in json.loads(body)["error"], body
        assert httpx.post(proc.url + "/anomaly-score", json=GOOD).status_code == 503
    finally:
        proc.stop()


def test_reload_switches_versions_and_refuses_broken_artifacts(keyed_server: ServerProcess, artifacts_v2: Path,
                                                               artifacts_dir: Path, tmp_path: Path) -> None:
    url, admin = keyed_server.url, auth("admin-key")
    for case, target in broken_copies(artifacts_v2, tmp_path).items():
        refused = httpx.post(url + "/admin/reload", json={"artifacts_dir": str(target)}, headers=admin, timeout=60)
        assert refused.status_code == 409 and EXPECTED[case] in refused.json()["error"], refused.text
        assert httpx.post(url + "/anomaly-score", json=GOOD, headers=auth("alpha-key")).json()["model"]["version"] == "1"
    switched = httpx.post(url + "/admin/reload", json={"artifacts_dir": str(artifacts_v2)}, headers=admin, timeout=60)
    assert switched.status_code == 200 and switched.json()["previous"]["version"] == "1"
    assert httpx.get(url + "/model", headers=auth("alpha-key")).json()["model"]["version"] == "2"
    back = httpx.post(url + "/admin/reload", json={"artifacts_dir": str(artifacts_dir)}, headers=admin, timeout=60)
    assert back.json()["model"]["version"] == "1"


def test_hot_reload_under_load_fails_no_request(artifacts_dir: Path, artifacts_v2: Path, tmp_path: Path) -> None:
    proc = start_server(artifacts_dir, tmp_path, admin_api_keys='["admin-key"]')

    async def scenario() -> tuple[list[int], set[str]]:
        statuses: list[int] = []
        versions: set[str] = set()
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            async def load() -> None:
                while not stop.is_set():
                    r = await client.post("/reconstruct", json=GOOD)
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model"]["version"])

            workers = [asyncio.create_task(load()) for _ in range(8)]
            for target in (artifacts_v2, artifacts_dir, artifacts_v2):
                await asyncio.sleep(0.3)
                r = await client.post("/admin/reload", json={"artifacts_dir": str(target)}, headers=auth("admin-key"))
                assert r.status_code == 200, r.text
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
        return statuses, versions

    try:
        statuses, versions = asyncio.run(scenario())
        assert len(statuses) > 50 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert versions == {"1", "2"}
    finally:
        proc.stop()


def test_sighup_reloads_the_configured_folder(artifacts_dir: Path, artifacts_v2: Path, tmp_path: Path) -> None:
    live = tmp_path / "live"
    shutil.copytree(artifacts_dir, live)
    proc = start_server(live, tmp_path)
    try:
        broken = broken_copies(artifacts_v2, tmp_path / "broken")["corrupted"]
        for source in (broken, artifacts_v2):
            for item in source.iterdir():
                shutil.copy2(item, live / item.name)
            proc.process.send_signal(signal.SIGHUP)
            time.sleep(3)
            version = httpx.get(proc.url + "/model").json()["model"]["version"]
            assert version == ("1" if source is broken else "2")
            assert httpx.post(proc.url + "/anomaly-score", json=GOOD).status_code == 200
    finally:
        proc.stop()
