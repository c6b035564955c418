"""The deployment's peers as real processes on 127.0.0.1: vaeserve replicas, Debian's nginx and prometheus.

Each uses the repo's own file from deploy/: the nginx template rendered with envsubst (as the nginx
image does in compose), the Prometheus config with only its service discovery pointed at loopback.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from harness.servers import REPO, ServerProcess, free_port, wait_for_http, wait_until_ready

NGINX_TEMPLATE = REPO / "deploy/nginx/templates/default.conf.template"
PROMETHEUS_CONFIG = REPO / "deploy/prometheus/prometheus.yml"
# The serve image has no torch: the replicas run with torch made unimportable to prove they need none.
SERVE_WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from vaeserve.cli import main; "
                       "sys.exit(main(['serve']))")


def require_binary(name: str) -> str:
    """The path of a Debian binary the test needs; a clear failure (never a skip) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"`{name}` is not installed: run `make test-debs` (Debian packages in TEST_DEBS)")
    return path


def start_replica(artifacts: Path, log_dir: Path, **settings: object) -> ServerProcess:
    """`vaeserve serve` (the container's entry point) with VAESERVE_* settings, torch unimportable."""
    port = free_port()
    env = {**os.environ, "VAESERVE_ARTIFACTS_DIR": str(artifacts), "VAESERVE_HOST": "127.0.0.1",
           "VAESERVE_PORT": str(port), "PYTHONPATH": str(REPO)}
    env.update({f"VAESERVE_{k.upper()}": str(v) for k, v in settings.items()})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"replica-{port}.log"
    process = subprocess.Popen([sys.executable, "-c", SERVE_WITHOUT_TORCH], env=env, cwd=REPO,
                               stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    return ServerProcess(f"http://127.0.0.1:{port}", port, process, log_path)


def start_replicas(artifacts: Path, log_dir: Path, count: int, **settings: object) -> list[ServerProcess]:
    """Start `count` replicas at once (they load in parallel), then wait for each to be ready."""
    replicas = [start_replica(artifacts, log_dir, **settings) for _ in range(count)]
    for replica in replicas:
        wait_until_ready(replica, timeout_s=90)
    return replicas


def render_template(template: Path, out: Path, variables: dict[str, str]) -> Path:
    """envsubst with an explicit variable list, as the nginx image's 20-envsubst-on-templates.sh does."""
    shell_format = " ".join(f"${{{name}}}" for name in variables)
    rendered = subprocess.run([require_binary("envsubst"), shell_format], input=template.read_text(),
                              env={**os.environ, **variables}, capture_output=True, text=True, check=True).stdout
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(rendered)
    return out


@dataclass
class Nginx:
    url: str
    process: subprocess.Popen[bytes]
    access_log: Path
    error_log: Path

    def entries(self) -> list[dict[str, str]]:
        """The access log parsed: time, status, and the upstream tries of each request."""
        pattern = re.compile(r'^(?P<msec>[\d.]+) \S+ "(?P<request>[^"]*)" (?P<status>\d+) \S+ '
                             r"upstream=\[(?P<upstream>[^\]]*)\] upstream_status=\[(?P<upstream_status>[^\]]*)\]")
        return [m.groupdict() for m in map(pattern.match, self.access_log.read_text().splitlines()) if m]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: fast shutdown
            self.process.wait(10)


def start_nginx(tmp: Path, upstream_ports: list[int]) -> Nginx:
    """Debian's nginx as the current user, with the repo's template rendered for loopback replicas."""
    nginx = require_binary("nginx")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = " ".join(f"server 127.0.0.1:{p};" for p in upstream_ports)
    render_template(NGINX_TEMPLATE, tmp / "conf.d/default.conf",
                    {"LB_LISTEN": f"127.0.0.1:{port}", "LB_UPSTREAM_SERVERS": servers,
                     "LB_ACCESS_LOG": str(tmp / "access.log")})
    # What the nginx image's own nginx.conf provides around conf.d/, with paths a normal user may write.
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp}/{kind};" for kind in kinds)
    # As root (some CI containers) the workers would switch to `nobody`, who cannot write tmp: keep the user.
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
        f"events {{ worker_connections 512; }}\n"
        f"http {{\n{temp_paths}\n    include {tmp}/conf.d/*.conf;\n}}\n")
    process = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
                               stdout=(tmp / "nginx.out").open("wb"), stderr=subprocess.STDOUT)
    server = Nginx(f"http://127.0.0.1:{port}", process, tmp / "access.log", tmp / "error.log")
    wait_for_http(f"{server.url}/lb-health", process, what="nginx", log_path=tmp / "error.log")
    return server


def prometheus_config_for(targets: list[str]) -> dict[str, object]:
    """deploy/prometheus/prometheus.yml with the vaeserve job's DNS discovery replaced by `targets`."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "vaeserve"]
    assert len(jobs) == 1 and "dns_sd_configs" in jobs[0], f"{PROMETHEUS_CONFIG}: one vaeserve job with dns_sd_configs"
    del jobs[0]["dns_sd_configs"]
    jobs[0]["static_configs"] = [{"targets": targets}]
    # The rule files are relative to prometheus.yml; the loopback copy lives elsewhere.
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config.get("rule_files", [])]
    return config


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> dict[str, object]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def start_prometheus(tmp: Path, targets: list[str]) -> Prometheus:
    """Debian's prometheus as the current user, storage in tmp, listening on 127.0.0.1 only."""
    prometheus = require_binary("prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config_for(targets)))
    port = free_port()
    log = tmp / "prometheus.log"
    process = subprocess.Popen([prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={tmp / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    wait_for_http(f"{server.url}/-/ready", process, what="prometheus", log_path=log)
    return server


