"""The compose deployment's containers, started one by one: two serve replicas on their own ports, nginx with
the repository's template in front, Prometheus with the repository's config scraping both; then `docker stop`
of one replica under load."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import yaml

from harness.servers import REPO
from tests.containers.conftest import TrainRun
from tests.containers.engine import FIGURES, docker
from tests.containers.stack import (
    Container,
    access_entries,
    active_targets,
    query,
    served,
    start_nginx,
    start_prometheus,
    start_replica,
    wait_health,
    wait_ready,
    wait_until,
)
from tests.deploy.peers import PROMETHEUS_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class Stack:
    replicas: list[Container]
    nginx: Container
    prometheus: Container

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{r.port}" for r in self.replicas]


@pytest.fixture(scope="module")
def stack(serve_image: str, nginx_image: str, prometheus_image: str, trained: TrainRun,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started: list[Container] = []
    try:
        started += [start_replica(serve_image, trained.artifacts) for _ in range(2)]
        for replica in started:
            wait_ready(replica)
        ready_s = [time.monotonic() - r.started_at for r in started]  # both started together: an upper bound
        FIGURES.lines.append(f"serve replicas ready (/readyz 200) within {max(ready_s):.1f}s of docker run")
        nginx = start_nginx(nginx_image, [r.port for r in started])
        started.append(nginx)
        prometheus = start_prometheus(prometheus_image, tmp_path_factory.mktemp("prometheus"),
                                      [f"127.0.0.1:{r.port}" for r in started[:2]])
        started.append(prometheus)
        yield Stack(started[:2], nginx, prometheus)
    finally:
        for container in started:
            container.remove()


def encode_body(test_images: np.ndarray, n: int = 4) -> dict[str, object]:
    return {"inputs": test_images[:n].tolist()}


def test_replicas_turn_healthy_with_the_images_own_healthcheck(stack: Stack) -> None:
    seconds = [wait_health(r, "healthy", timeout_s=90) for r in stack.replicas]
    assert max(seconds) < 60, f"healthy only after {seconds}s: past the HEALTHCHECK's start period"
    FIGURES.lines.append(f"time to healthy (the Dockerfile's HEALTHCHECK, 10 s interval): "
                         f"{', '.join(f'{s:.1f}s' for s in seconds)} after docker run")


def test_requests_through_nginx_reach_both_replicas(stack: Stack, test_images: np.ndarray) -> None:
    before = [served(r.url, "/encode") for r in stack.replicas]
    with httpx.Client(base_url=stack.nginx.url, timeout=10) as client:
        statuses = Counter(client.post("/encode", json=encode_body(test_images)).status_code for _ in range(40))
    assert statuses == {200: 40}
    split = [served(r.url, "/encode") - b for r, b in zip(stack.replicas, before)]
    assert sum(split) == 40 and min(split) >= 10, f"requests per replica: {split}"
    upstreams = Counter(e["upstream"] for e in access_entries(stack.nginx) if e["request"].startswith("POST /encode"))
    assert set(upstreams) == set(stack.addresses), upstreams
    assert httpx.get(f"{stack.nginx.url}/metrics").status_code == 404  # Prometheus scrapes each replica
    FIGURES.lines.append(f"40 requests through the nginx container: {[int(s) for s in split]} per replica "
                         f"(their own counters)")


def alert_rules() -> list[dict[str, object]]:
    """Every rule of the rule files deploy/prometheus/prometheus.yml loads."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return [rule for name in config.get("rule_files", [])
            for group in yaml.safe_load((PROMETHEUS_CONFIG.parent / name).read_text())["groups"]
            for rule in group["rules"]]


def test_prometheus_scrapes_both_replicas(stack: Stack) -> None:
    def both_up() -> bool:
        return sum(t["health"] == "up" for t in active_targets(stack.prometheus)) == 2

    wait_until(both_up, what="both targets up", timeout_s=30, container=stack.prometheus, interval_s=0.5)
    targets = active_targets(stack.prometheus)
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(stack.addresses)  # type: ignore[index]
    groups = httpx.get(f"{stack.prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = sum(len(g["rules"]) for g in groups)
    assert loaded == len(alert_rules()), f"rules loaded: {groups}"
    result = query(stack.prometheus, "vaeserve_ready")
    assert result["status"] == "success", result
    ready = {(s["metric"]["instance"], s["value"][1]) for s in result["data"]["result"]}  # type: ignore[index]
    assert ready == {(address, "1") for address in stack.addresses}, ready


@dataclass
class Load:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)


def client_loop(url: str, body: dict[str, object], load: Load, stop: threading.Event, limit: int) -> None:
    """One client connection sending requests back to back until told to stop (bounded by `limit`)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set() and load.done < limit:
            try:
                status = client.post("/encode", json=body).status_code
            except httpx.HTTPError as exc:
                with load.lock:
                    load.errors.append(repr(exc))
                continue
            with load.lock:
                load.statuses[status] += 1


def promised_exit_status() -> int:
    """What the Dockerfile's comments promise `docker stop` ends the server with."""
    match = re.search(r"graceful shutdown, exit status (\d+)", (REPO / "Dockerfile").read_text())
    assert match, "the Dockerfile no longer says what exit status docker stop gives"
    return int(match.group(1))


def test_docker_stop_under_load_loses_no_accepted_request(serve_image: str, nginx_image: str, trained: TrainRun,
                                                           test_images: np.ndarray) -> None:
    replicas = [start_replica(serve_image, trained.artifacts) for _ in range(2)]
    started = list(replicas)
    load, stop = Load(), threading.Event()
    clients: list[threading.Thread] = []
    try:
        for replica in replicas:
            wait_ready(replica)
        nginx = start_nginx(nginx_image, [r.port for r in replicas])
        started.append(nginx)
        clients = [threading.Thread(target=client_loop, args=(nginx.url, encode_body(test_images), load, stop, 20000))
                   for _ in range(16)]
        for client in clients:
            client.start()
        wait_until(lambda: load.done >= 300, what="300 requests under load", timeout_s=60)
        leaving, staying = replicas
        signalled = time.monotonic()
        docker("stop", "--time", "30", leaving.name, timeout_s=60)  # SIGTERM; SIGKILL only after 30 s
        stopped_s = time.monotonic() - signalled
        at_stop = load.done
        time.sleep(1.0)  # the load goes on after the replica has gone
        state = leaving.state()
        stdout, stderr = leaving.logs()
    finally:
        stop.set()
        for client in clients:
            client.join(60)
        entries = access_entries(started[2]) if len(started) > 2 else []
        nginx_err = started[2].logs()[1] if len(started) > 2 else ""
        for container in started:
            container.remove()

    assert load.errors == [] and set(load.statuses) == {200}, (load.statuses, load.errors[:5])
    assert state["ExitCode"] == promised_exit_status(), f"exit status {state['ExitCode']}\n{stderr[-3000:]}"
    assert state["OOMKilled"] is False
    log = stdout + stderr
    assert "SIGTERM: readiness 503, refusing new requests" in log and "shutdown: queues drained" in log, log[-3000:]
    assert stopped_s < 10, f"docker stop took {stopped_s:.1f}s (grace 2 s)"
    posts = [e for e in entries if e["request"].startswith("POST /encode")]
    assert len(posts) == load.done and all(e["status"] == "200" for e in posts)
    gone, other = f"127.0.0.1:{leaving.port}", f"127.0.0.1:{staying.port}"
    tries = [(addr, status) for e in posts for addr, status in zip(e["upstream"].split(", "),
                                                                 e["upstream_status"].split(", "))]
    # Each try at the leaving replica was answered (200), refused before any work (503), or found the port
    # closed (502: connection refused); none was cut off mid-request.
    assert {status for addr, status in tries if addr == gone} <= {"200", "503", "502"}, tries
    for cut_off in ("prematurely closed", "reset by peer", "timed out"):
        assert cut_off not in nginx_err, nginx_err[-3000:]
    per_replica = Counter(e["upstream"].split(", ")[-1] for e in posts)
    in_flight = re.findall(r"(\d+) in flight", log)
    FIGURES.lines.append(
        f"docker stop under load (16 clients through nginx): {load.done} requests, {load.statuses[200]} answered 200, "
        f"0 lost; {at_stop} done when stop returned; per replica {per_replica[gone]} / {per_replica[other]}; "
        f"{sum(', ' in e['upstream'] for e in posts)} retried on the other; {in_flight[0] if in_flight else '?'} in "
        f"flight at SIGTERM; stopped in {stopped_s:.1f}s, exit status {state['ExitCode']}")
