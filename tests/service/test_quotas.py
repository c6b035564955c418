"""Per-key quotas on a real server: a key over its rate gets 429 with Retry-After and RateLimit-*
while another key is served; the items x samples budget; metrics by key name; reload on SIGHUP."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, start_server
from service.http.quotas import QuotaBook, TokenBucket
from service.settings import Settings

ONE = {"inputs": [[0.5] * 784]}  # 1 item x 16 samples
QUOTAS = {
    "default": {"requests_per_s": 1000},
    "keys": {
        "team-a": {"key": "alpha-key", "requests_per_s": 1, "burst_s": 2},  # 2 requests, then 1 per second
        "team-b": {"key_sha256": hashlib.sha256(b"beta-key").hexdigest()},  # listed, unlimited
        "batch": {"key": "gamma-key", "item_samples_per_s": 10, "burst_s": 10},  # 100 items x samples
    },
}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_bucket_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(2.0, 1.5)  # 3 tokens
    now = bucket.updated
    assert [bucket.take(1, now) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, now) == pytest.approx(0.5)  # 1 token at 2/s
    assert bucket.take(1, now + 0.5) == 0.0
    assert dict(bucket.headers(now + 0.5)) == {b"ratelimit-limit": b"3", b"ratelimit-remaining": b"0",
                                               b"ratelimit-reset": b"2"}


@pytest.mark.parametrize(("config", "message"), [
    ({"keys": {"a": {"requests_per_s": 1}}}, "exactly one of `key` and `key_sha256`"),
    ({"keys": {"a b": {"key": "k"}}}, "key names must match"),
    ({"keys": {"a": {"key": "k", "requests_per_s": -1}}}, "keys.a.requests_per_s"),
    ({"default": {"requests_per_s": 1}, "extra": 1}, "extra"),
])
def test_bad_quota_configurations_name_the_field(config: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        QuotaBook.from_settings(Settings(key_quotas=config))


@pytest.fixture(scope="module")
def quota_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quotas") / "quotas.json"
    path.write_text(json.dumps(QUOTAS))
    return path


@pytest.fixture(scope="module")
def quota_server(artifacts_dir: Path, quota_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("quota-logs"), key_quotas_file=quota_file,
                        api_keys='["plain-key"]')
    yield proc
    proc.stop()


def test_a_key_over_its_rate_gets_429_while_another_key_is_served(quota_server: ServerProcess) -> None:
    with httpx.Client(base_url=quota_server.url, timeout=30) as client:
        first = client.post("/anomaly-score", json=ONE, headers=auth("alpha-key"))
        assert first.status_code == 200
        assert first.headers["ratelimit-limit"] == "2" and first.headers["ratelimit-remaining"] == "1"
        assert client.post("/anomaly-score", json=ONE, headers=auth("alpha-key")).status_code == 200
        refused = client.post("/anomaly-score", json=ONE, headers=auth("alpha-key"))
        assert refused.status_code == 429 and refused.json()["error_type"] == "quota_exceeded"
        assert "team-a" in refused.json()["error"] and "alpha-key" not in refused.text
        assert refused.headers["retry-after"] == "1" and refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-limit"] == "2" and int(refused.headers["ratelimit-reset"]) >= 1
        for _ in range(5):  # other keys: listed by digest, and an unlisted one (the default quota)
            assert client.post("/anomaly-score", json=ONE, headers=auth("beta-key")).status_code == 200
            assert client.post("/encode", json=ONE, headers=auth("plain-key")).status_code == 200
        time.sleep(1.05)  # one token back
        assert client.post("/anomaly-score", json=ONE, headers=auth("alpha-key")).status_code == 200
        metrics = client.get("/metrics").text
    assert 'vaeserve_key_quota_refusals_total{key="team-a",limit="requests"} 1.0' in metrics
    assert 'vaeserve_key_requests_total{key="team-b"} 5.0' in metrics
    assert 'vaeserve_key_requests_total{key="default"} 5.0' in metrics
    assert 'vaeserve_rejections_total{reason="quota"}' in metrics
    assert "alpha-key" not in metrics and "plain-key" not in metrics  # names, never keys


def test_items_times_samples_are_charged_before_anything_is_queued(quota_server: ServerProcess) -> None:
    with httpx.Client(base_url=quota_server.url, timeout=30) as client:
        statuses = [client.post("/anomaly-score", json=ONE, headers=auth("gamma-key")).status_code for _ in range(7)]
        assert statuses == [200] * 6 + [429]  # 6 x 16 of 100
        refused = client.post("/anomaly-score", json={**ONE, "mc_samples": 1}, headers=auth("gamma-key"))
        assert refused.status_code == 200, "1 x 1 still fits the 4 left"
        huge = client.post("/anomaly-score", json={"inputs": ONE["inputs"] * 8}, headers=auth("gamma-key"))
        assert huge.status_code == 413 and "split it" in huge.json()["error"]  # 128 > 100 ever
        metrics = client.get("/metrics").text
    assert 'vaeserve_key_item_samples_total{key="batch"} 97.0' in metrics
    assert 'vaeserve_key_quota_refusals_total{key="batch",limit="item_samples"} 2.0' in metrics


def test_keys_and_quotas_reload_on_sighup(quota_server: ServerProcess, quota_file: Path) -> None:
    url = quota_server.url + "/encode"
    assert httpx.post(url, json=ONE, headers=auth("delta-key")).status_code == 401
    changed = {**QUOTAS, "keys": {**QUOTAS["keys"], "team-d": {"key": "delta-key", "requests_per_s": 1}}}
    del changed["keys"]["team-b"]
    quota_file.write_text(json.dumps(changed))
    quota_server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while httpx.post(url, json=ONE, headers=auth("delta-key")).status_code != 200:
        assert time.monotonic() < deadline, "the new key was not accepted after SIGHUP"
        time.sleep(0.1)
    assert httpx.post(url, json=ONE, headers=auth("beta-key")).status_code == 401  # removed
    assert httpx.post(url, json=ONE, headers=auth("delta-key")).status_code == 429  # its quota applies
    quota_file.write_text("{broken")
    quota_server.process.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert "keys and quotas not reloaded, the previous ones stay" in quota_server.log()
    assert httpx.post(url, json=ONE, headers=auth("plain-key")).status_code == 200
    quota_file.write_text(json.dumps(QUOTAS))


def test_buckets_of_keys_nobody_vouched_for_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A default quota without API keys gives any made-up key a bucket: the oldest go, memory stays flat."""
    import service.http.quotas as quotas

    monkeypatch.setattr(quotas, "MAX_TRACKED_KEYS", 100)
    book = QuotaBook.from_settings(Settings(key_quotas={"default": {"requests_per_s": 1}}))
    first = book.quota(b"k0")
    for i in range(1, 1000):
        assert book.quota(f"k{i}".encode()) is not None
    assert len(book._quotas) == 100 and book.quota(b"k999") is book.quota(b"k999")
    assert book.quota(b"k0") is not first, "the least recently used bucket was dropped"
