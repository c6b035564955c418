"""docker-compose.yml brought up by Debian's docker-compose 1.29 with docker-compose.host.yml, this machine's
override (host network, local images, no Grafana), and the checks that keep that override in step."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from harness.servers import REPO
from tests.containers.conftest import REQUIRED, TRAIN_ENV, TrainRun
from tests.containers.engine import FIGURES, docker
from tests.containers.stack import RUN_ID, answers, loopback_prometheus_config, served, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
COMPOSE = REPO / "docker-compose.yml"
OVERRIDE = REPO / "docker-compose.host.yml"
LOOPBACK_PROMETHEUS = REPO / "deploy/prometheus/prometheus.loopback.yml"
PORTS = {"api": 18001, "api-2": 18002, "lb-host": 18080, "prometheus-host": 19090}
LOOPBACK_TARGETS = [f"127.0.0.1:{PORTS['api']}", f"127.0.0.1:{PORTS['api-2']}"]


def load(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    assert isinstance(spec, dict)
    return spec


# ---- the override follows docker-compose.yml (no engine needed)

def test_loopback_prometheus_config_is_the_repositorys_with_static_targets() -> None:
    expected = loopback_prometheus_config(LOOPBACK_TARGETS)
    assert load(LOOPBACK_PROMETHEUS) == expected, (
        f"{LOOPBACK_PROMETHEUS.name} is out of step with prometheus.yml; its content should be:\n"
        f"{yaml.safe_dump(expected, sort_keys=False)}")


def test_host_override_twins_keep_the_files_and_arguments_of_the_originals() -> None:
    base, override = load(COMPOSE)["services"], load(OVERRIDE)["services"]
    assert set(override) - set(base) == {"api-2", "lb-host", "prometheus-host"}
    assert all(override[name]["profiles"] == ["published-ports"] for name in ("lb", "prometheus", "grafana"))
    api_env = {**base["api"]["environment"], **override["api"]["environment"]}
    assert override["api-2"]["environment"] == {**api_env, "VAESERVE_PORT": str(PORTS["api-2"])}, (
        "docker-compose.host.yml: api-2's environment must be api's (docker-compose.yml) on port 18002")
    for key in ("volumes", "depends_on", "stop_grace_period", "restart"):
        assert override["api-2"][key] == base["api"][key], key
    lb, lb_host = base["lb"], override["lb-host"]
    assert lb_host["volumes"] == lb["volumes"] and set(lb_host["environment"]) == set(lb["environment"])
    assert lb_host["environment"]["LB_UPSTREAM_SERVERS"] == " ".join(f"server {t};" for t in LOOPBACK_TARGETS)
    prometheus, prometheus_host = base["prometheus"], override["prometheus-host"]
    listen = f"--web.listen-address=127.0.0.1:{PORTS['prometheus-host']}"
    assert prometheus_host["command"] == [*prometheus["command"], listen]
    config = "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    loopback = "./deploy/prometheus/prometheus.loopback.yml:/etc/prometheus/prometheus.yml:ro"
    assert prometheus_host["volumes"] == [loopback if v == config else v for v in prometheus["volumes"]]
    assert all(s.get("network_mode") == "host" for name, s in override.items() if "profiles" not in s)


def compose_file_for_1_29(tmp_path: Path) -> Path:
    """docker-compose.yml less its top-level `name:` (Compose v2.3+; 1.29 rejects it), and nothing else."""
    text = COMPOSE.read_text()
    stripped = re.sub(r"^name: \S+\n", "", text, flags=re.MULTILINE)
    assert {k: v for k, v in load(COMPOSE).items() if k != "name"} == yaml.safe_load(stripped)
    path = tmp_path / "docker-compose.yml"
    path.write_text(stripped)
    return path


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def prefill_volume(volume: str, project: str, artifacts: Path, image: str) -> None:
    """The named volume `artifacts` holding the train image's export, labelled as compose labels its own:
    `train` (train-if-missing) then finds the manifest and does nothing; the training run itself is the
    `trained` fixture's, with the same image and script."""
    docker("volume", "create", "--label", f"com.docker.compose.project={project}",
           "--label", "com.docker.compose.volume=artifacts", "--label", "com.docker.compose.version=1.29.2", volume)
    docker("run", "--rm", "--network", "host", "--volume", f"{volume}:/artifacts", "--volume", f"{artifacts}:/src:ro",
           "--entrypoint", "sh", image, "-c", "cp -R /src/. /artifacts/")


def test_compose_file_comes_up_with_docker_compose_1_29(serve_image: str, train_image: str, nginx_image: str,
                                                       prometheus_image: str, trained: TrainRun, tmp_path: Path,
                                                       test_images: np.ndarray) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        message = "docker-compose (Debian's 1.29) is not installed: apt-get install docker-compose"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    taken = [port for port in PORTS.values() if not port_is_free(port)]
    assert not taken, f"ports {taken} on 127.0.0.1 are in use; docker-compose.host.yml needs them"
    project = f"vaeservetest{RUN_ID}"
    command = [compose, "--project-directory", str(REPO), "--project-name", project,
               "--file", str(compose_file_for_1_29(tmp_path)), "--file", str(OVERRIDE)]
    env = {**os.environ, **TRAIN_ENV}  # tiny, should train-if-missing find no manifest after all
    prefill_volume(f"{project}_artifacts", project, trained.artifacts, train_image)
    started = time.monotonic()
    try:
        up = subprocess.run([*command, "up", "--detach", "--no-build"], capture_output=True, text=True, env=env,
                            timeout=600)
        up_s = time.monotonic() - started
        assert up.returncode == 0, up.stdout + up.stderr
        train = docker("inspect", "--format", "{{.State.ExitCode}}", f"{project}_train_1").stdout.strip()
        assert train == "0" and "nothing to do" in docker("logs", f"{project}_train_1").stdout
        ports = [PORTS["api"], PORTS["api-2"]]
        before = [served(f"http://127.0.0.1:{port}", "/encode") for port in ports]
        lb = f"http://127.0.0.1:{PORTS['lb-host']}"
        wait_until(lambda: answers(f"{lb}/lb-health"), what="lb-host", timeout_s=30)
        with httpx.Client(base_url=lb, timeout=10) as client:
            body = {"inputs": test_images[:4].tolist()}
            statuses = Counter(client.post("/encode", json=body).status_code for _ in range(20))
        assert statuses == {200: 20}
        split = [served(f"http://127.0.0.1:{port}", "/encode") - b for port, b in zip(ports, before)]
        assert sum(split) == 20 and min(split) >= 5, split
        prometheus = f"http://127.0.0.1:{PORTS['prometheus-host']}"

        def both_up() -> bool:
            try:
                targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            except httpx.HTTPError:
                return False
            return sorted(t["labels"]["instance"] for t in targets if t["health"] == "up") == LOOPBACK_TARGETS

        wait_until(both_up, what="Prometheus scraping both replicas", timeout_s=30, interval_s=0.5)
        running = subprocess.run([*command, "ps", "--services", "--filter", "status=running"], capture_output=True,
                                 text=True, env=env, timeout=60).stdout.split()
        assert sorted(running) == ["api", "api-2", "lb-host", "prometheus-host"], running
    finally:
        down = subprocess.run([*command, "down", "--volumes", "--remove-orphans", "--timeout", "30"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    FIGURES.lines.append(f"docker-compose 1.29 up (train: nothing to do, api + api-2 healthy, lb-host, "
                         f"prometheus-host): {up_s:.1f}s; 20 requests through lb-host: {[int(s) for s in split]}")
