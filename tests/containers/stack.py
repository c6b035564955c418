"""The deployment's containers on the host's network: serve replicas, nginx and Prometheus, each listening on
127.0.0.1 only, each named and labelled for this run so cleanup removes only what the run made."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import free_port
from tests.containers.engine import LABEL, docker
from tests.deploy.peers import NGINX_TEMPLATE, PROMETHEUS_CONFIG

RUN_ID = f"{os.getpid()}"
_names = itertools.count(1)
# The same hardening as deploy/k8s/deployment.yaml: read-only root, /tmp writable, no capabilities.
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


@dataclass
class Container:
    name: str
    port: int = 0
    started_at: float = 0.0  # time.monotonic() when `docker run` returned

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, object]:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def health(self) -> str:
        health = self.state().get("Health")
        return str(health["Status"]) if isinstance(health, dict) else "none"

    def logs(self) -> tuple[str, str]:
        """(stdout, stderr) of the container so far."""
        done = docker("logs", self.name, check=False, timeout_s=30)
        return done.stdout, done.stderr

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False, timeout_s=60)


def run(image: str, *args: str, role: str, port: int = 0, command: list[str] | None = None) -> Container:
    """`docker run -d` on the host's network, labelled with this run's id."""
    name = f"vaeserve-test-{RUN_ID}-{role}-{next(_names)}"
    docker("run", "--detach", "--network", "host", "--name", name, "--label", f"{LABEL}={RUN_ID}", *args, image,
           *(command or []))
    return Container(name, port, time.monotonic())


def remove_this_runs_containers() -> None:
    names = docker("ps", "--all", "--quiet", "--filter", f"label={LABEL}={RUN_ID}").stdout.split()
    if names:
        docker("rm", "--force", "--volumes", *names, check=False, timeout_s=120)


def start_replica(image: str, artifacts: Path, *, health: list[str] | None = None, **settings: object) -> Container:
    """A serve container (the image's own entry point and HEALTHCHECK) on 127.0.0.1:<free port>."""
    port = free_port()
    env = {"VAESERVE_HOST": "127.0.0.1", "VAESERVE_PORT": str(port)}
    env.update({f"VAESERVE_{k.upper()}": str(v) for k, v in settings.items()})
    args = [*HARDENED, "--volume", f"{artifacts}:/artifacts:ro", *(health or [])]
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    return run(image, *args, role="api", port=port)


def wait_until(predicate: object, *, what: str, timeout_s: float, container: Container | None = None,
               interval_s: float = 0.2) -> float:
    """Poll until predicate() is true; the seconds it took. On timeout, fail with the container's log."""
    assert callable(predicate)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval_s)
    log = "\n".join(container.logs())[-4000:] if container else ""
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s\n{log}")


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.HTTPError:
        return False


def wait_ready(replica: Container, timeout_s: float = 90) -> float:
    return wait_until(lambda: answers(f"{replica.url}/readyz"), what=f"{replica.name} /readyz 200",
                      timeout_s=timeout_s, container=replica)


def wait_health(container: Container, status: str, timeout_s: float) -> float:
    """Seconds from `docker run` (or now, if later) until docker reports the health status."""
    wait_until(lambda: container.health() == status, what=f"{container.name} {status}", timeout_s=timeout_s,
               container=container, interval_s=0.25)
    return time.monotonic() - container.started_at


def start_nginx(image: str, upstream_ports: list[int]) -> Container:
    """The local nginx image with the repository's template, rendered by the image as in compose."""
    port = free_port()
    servers = " ".join(f"server 127.0.0.1:{p};" for p in upstream_ports)
    env = {"NGINX_ENVSUBST_FILTER": "^LB_", "LB_LISTEN": f"127.0.0.1:{port}", "LB_UPSTREAM_SERVERS": servers,
           "LB_ACCESS_LOG": "/dev/stdout"}
    args = ["--volume", f"{NGINX_TEMPLATE.parent}:/etc/nginx/templates:ro"]
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    nginx = run(image, *args, role="lb", port=port)
    wait_until(lambda: answers(f"{nginx.url}/lb-health"), what="nginx /lb-health", timeout_s=30, container=nginx)
    return nginx


# deploy/nginx/templates/default.conf.template's log_format vaeserve_upstream (as tests/deploy/peers.py reads it).
ACCESS_LINE = re.compile(r'^(?P<msec>[\d.]+) \S+ "(?P<request>[^"]*)" (?P<status>\d+) \S+ '
                         r"upstream=\[(?P<upstream>[^\]]*)\] upstream_status=\[(?P<upstream_status>[^\]]*)\]")


def access_entries(nginx: Container) -> list[dict[str, str]]:
    stdout, _ = nginx.logs()
    return [m.groupdict() for m in map(ACCESS_LINE.match, stdout.splitlines()) if m]


def loopback_prometheus_config(targets: list[str]) -> dict[str, object]:
    """deploy/prometheus/prometheus.yml with the vaeserve job's DNS discovery replaced by static `targets`;
    rule files stay relative (the container has them beside the config, as in compose)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "vaeserve"]
    assert "dns_sd_configs" in job, f"{PROMETHEUS_CONFIG}: the vaeserve job has no dns_sd_configs to replace"
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": targets}]
    assert isinstance(config, dict)
    return config


def start_prometheus(image: str, config_dir: Path, targets: list[str]) -> Container:
    """The local Prometheus image with the repository's config (static loopback targets) and rule files."""
    port = free_port()
    config_dir.mkdir(parents=True, exist_ok=True)
    config = loopback_prometheus_config(targets)
    (config_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    config_dir.chmod(0o755)
    (config_dir / "prometheus.yml").chmod(0o644)  # the image runs as nobody
    mounts = ["--volume", f"{config_dir / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro"]
    for name in config.get("rule_files", []):  # type: ignore[attr-defined]
        mounts += ["--volume", f"{PROMETHEUS_CONFIG.parent / name}:/etc/prometheus/{name}:ro"]
    prometheus = run(image, *mounts, role="prometheus", port=port,
                     command=["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                              f"--web.listen-address=127.0.0.1:{port}"])
    wait_until(lambda: answers(f"{prometheus.url}/-/ready"), what="prometheus /-/ready", timeout_s=60,
               container=prometheus)
    return prometheus


def served(url: str, endpoint: str) -> float:
    """vaeserve_requests_total{endpoint=..., status="200"} as a replica reports it, summed over other labels."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "vaeserve_requests_total" and sample.labels.get("endpoint") == endpoint
               and sample.labels.get("status") == "200")


def active_targets(prometheus: Container) -> list[dict[str, object]]:
    targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    assert isinstance(targets, list)
    return targets


def query(prometheus: Container, expr: str) -> dict[str, object]:
    result = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert isinstance(result, dict)
    return result
