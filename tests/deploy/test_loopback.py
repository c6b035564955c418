"""The compose deployment without Docker: two replicas, Debian's nginx and prometheus with the repo's
own deploy/ configuration, all on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.servers import REPO, ServerProcess
from tests.deploy.peers import Nginx, Prometheus, start_nginx, start_prometheus, start_replicas

pytestmark = pytest.mark.slow
DASHBOARD = REPO / "deploy/grafana/dashboards/vaeserve.json"


@dataclass
class Cluster:
    replicas: list[ServerProcess]
    nginx: Nginx
    prometheus: Prometheus | None = None
    addresses: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for peer in (self.prometheus, self.nginx):
            if peer is not None:
                peer.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture(scope="module")
def cluster(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    replicas = start_replicas(artifacts_dir, tmp / "replicas", 2)
    addresses = [f"127.0.0.1:{r.port}" for r in replicas]
    running = Cluster(replicas, start_nginx(tmp / "nginx", [r.port for r in replicas]), addresses=addresses)
    try:
        running.prometheus = start_prometheus(tmp / "prometheus", addresses)
        yield running
    finally:
        running.stop()


def encode_body(test_images: np.ndarray, n: int = 4) -> dict[str, object]:
    return {"inputs": test_images[:n].tolist()}


def replica_count(replica: ServerProcess, endpoint: str, status: str = "200") -> float:
    """vaeserve_requests_total{endpoint, status} as the replica itself reports it."""
    text = httpx.get(f"{replica.url}/metrics", timeout=5).text
    pattern = rf'^vaeserve_requests_total\{{endpoint="{re.escape(endpoint)}",status="{status}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_requests_through_the_load_balancer_reach_both_replicas(cluster: Cluster, test_images: np.ndarray) -> None:
    before = [replica_count(r, "/encode") for r in cluster.replicas]
    with httpx.Client(base_url=cluster.nginx.url, timeout=10) as client:
        statuses = Counter(client.post("/encode", json=encode_body(test_images)).status_code for _ in range(40))
    assert statuses == {200: 40}
    served = [replica_count(r, "/encode") - b for r, b in zip(cluster.replicas, before)]
    assert sum(served) == 40 and min(served) >= 10, f"requests per replica: {served}"
    upstreams = Counter(e["upstream"] for e in cluster.nginx.entries() if e["request"].startswith("POST /encode"))
    assert set(upstreams) == set(cluster.addresses), upstreams
    print(f"\n40 requests through nginx: {served} per replica (their own counters), nginx log {dict(upstreams)}")


def test_the_load_balancer_keeps_metrics_and_admin_routes_per_replica(cluster: Cluster) -> None:
    assert httpx.get(f"{cluster.nginx.url}/metrics").status_code == 404
    assert httpx.post(f"{cluster.nginx.url}/admin/reload").status_code == 403
    assert httpx.get(f"{cluster.nginx.url}/readyz").status_code == 200
    sample = httpx.post(f"{cluster.nginx.url}/sample", json={"n": 2, "seed": 0})  # deploy/README.md's example
    assert sample.status_code == 200 and len(sample.json()["samples"]) == 2


def wait_for_targets(prometheus: Prometheus, count: int, timeout_s: float = 30) -> list[dict[str, object]]:
    """The active targets once `count` of them are up (the config scrapes every 5 s)."""
    deadline = time.monotonic() + timeout_s
    targets: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        if sum(t["health"] == "up" for t in targets) >= count:
            return targets
        time.sleep(0.5)
    raise AssertionError(f"Prometheus targets not up within {timeout_s}s: {json.dumps(targets, indent=1)}")


def test_prometheus_scrapes_every_replica(cluster: Cluster) -> None:
    assert cluster.prometheus is not None
    targets = wait_for_targets(cluster.prometheus, 2)
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(cluster.addresses)
    assert {t["labels"]["job"] for t in targets} == {"vaeserve"}
    result = cluster.prometheus.query("vaeserve_ready")
    assert result["status"] == "success"
    ready = {s["metric"]["instance"]: s["value"][1] for s in result["data"]["result"]}
    assert ready == {address: "1" for address in cluster.addresses}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, with Grafana's interval macros made concrete."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"].replace("$__rate_interval", "1m").replace("$__interval", "15s"))
            for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_runs_in_prometheus(cluster: Cluster, test_images: np.ndarray) -> None:
    assert cluster.prometheus is not None
    with httpx.Client(base_url=cluster.nginx.url, timeout=10) as client:
        for _ in range(10):
            assert client.post("/anomaly-score", json=encode_body(test_images)).status_code == 200
    wait_for_targets(cluster.prometheus, 2)
    time.sleep(6)  # one more scrape after the requests above
    empty = []
    for title, expr in dashboard_queries():
        result = cluster.prometheus.query(expr)
        assert result["status"] == "success", f"{title}: {expr}: {result}"
        if not result["data"]["result"]:
            empty.append(title)
    # Rates need two scrapes of a changed counter; the series must exist at least.
    assert not [t for t in empty if t in ("Replicas up / ready", "Model per replica", "Queue depth")], empty


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def steady_load(url: str, body: dict[str, object], result: LoadResult, stop: threading.Event, *, limit: int) -> None:
    """One client connection sending requests back to back until told to stop or `limit` are done."""
    with httpx.Client(base_url=url, timeout=20) as client:
        while not stop.is_set() and result.done < limit:
            try:
                status = client.post("/encode", json=body).status_code
            except httpx.HTTPError as exc:
                with result.lock:
                    result.errors.append(repr(exc))
                continue
            with result.lock:
                result.statuses[status] += 1
                result.done += 1


def test_sigterm_under_load_loses_no_request(artifacts_dir: Path, tmp_path: Path, test_images: np.ndarray) -> None:
    grace_s, drain_s = 1.0, 5.0
    replicas = start_replicas(artifacts_dir, tmp_path / "replicas", 2, shutdown_grace_s=grace_s,
                              shutdown_drain_timeout_s=drain_s)
    nginx = start_nginx(tmp_path / "nginx", [r.port for r in replicas])
    leaving, staying = replicas
    result, stop = LoadResult(), threading.Event()
    clients = [threading.Thread(target=steady_load, args=(nginx.url, encode_body(test_images), result, stop),
                                kwargs={"limit": 5000}) for _ in range(4)]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + 20
        while result.done < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        signalled = time.time()
        leaving.process.send_signal(signal.SIGTERM)
        leaving.process.wait(grace_s + drain_s + 5)
        left = time.time()
        time.sleep(1.0)  # keep the load on after the replica has gone
    finally:
        stop.set()
        for client in clients:
            client.join(30)
        nginx.stop()
        for replica in replicas:
            replica.stop()

    assert result.errors == [] and set(result.statuses) == {200}, (result.statuses, result.errors[:5])
    assert left - signalled < grace_s + 2.0, f"the replica took {left - signalled:.2f}s to stop"
    log = leaving.log()
    assert "SIGTERM: readiness 503, refusing new requests" in log and "shutdown: queues drained" in log, log

    entries = [e for e in nginx.entries() if e["request"].startswith("POST /encode")]
    assert len(entries) == sum(result.statuses.values()) and all(e["status"] == "200" for e in entries)
    gone, other = f"127.0.0.1:{leaving.port}", f"127.0.0.1:{staying.port}"
    after = [e for e in entries if float(e["msec"]) > left]
    assert after and all(e["upstream"].split(", ")[-1] == other for e in after)
    # Each try nginx made to the leaving replica was answered (200), refused before any work (503), or
    # found the port closed (502 with "connection refused"): none was cut off mid-request.
    tries = [(addr, status) for e in entries
             for addr, status in zip(e["upstream"].split(", "), e["upstream_status"].split(", "))]
    assert {status for addr, status in tries if addr == gone} <= {"200", "503", "502"}, tries
    error_log = nginx.error_log.read_text()
    for cut_off in ("prematurely closed", "reset by peer", "timed out"):
        assert cut_off not in error_log, error_log
    in_flight = re.findall(r"(\d+) in flight", log)
    per_replica = Counter(e["upstream"].split(", ")[-1] for e in entries)
    print(f"\nSIGTERM under load: {len(entries)} requests, all 200; answered per replica {dict(per_replica)}; "
          f"retried on the other replica {sum(', ' in e['upstream'] for e in entries)}; {in_flight} in flight at "
          f"SIGTERM; stopped {left - signalled:.2f}s after SIGTERM (grace {grace_s}s)")
