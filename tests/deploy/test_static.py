"""Static checks of the deployment files: the Dockerfile, compose, nginx, Prometheus, Grafana, Kubernetes,
and the settings table in deploy/README.md."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import REPO, ServerProcess, free_port
from service.server import healthcheck
from service.settings import Settings
from tests.deploy.peers import NGINX_TEMPLATE, PROMETHEUS_CONFIG, prometheus_config_for, render_template, require_binary

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DASHBOARD = REPO / "deploy/grafana/dashboards/vaeserve.json"
K8S = REPO / "deploy/k8s"
BIN = Path(sys.executable).parent


def dev_tool(name: str) -> str:
    """A command-line tool from the dev extra (pip), next to this Python or on PATH."""
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is missing: pip install -e '.[dev]'")
    return path


def pyproject_extra(name: str) -> list[Requirement]:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [Requirement(r) for r in extras[name]]


def pins(path: Path) -> dict[str, str]:
    """name -> exact version of a requirements file, names normalized."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line} is not an exact pin"
            found[normalize(requirement.name)] = specifier.version
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- Dockerfile

def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = dev_tool("hadolint")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\n")  # untagged base, unpinned pip: must be caught
    assert subprocess.run([hadolint, str(bad)], capture_output=True).returncode != 0


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(2)
            stages[current] = line + "\n"
        elif current and line.strip() and not line.lstrip().startswith("#"):
            stages[current] += line + "\n"
    return stages


def test_images_are_what_operators_expect() -> None:
    stages = dockerfile_stages()
    assert {"train", "serve", "runtime-cpu", "runtime-gpu"} <= set(stages)
    torch_pin = next(str(r.specifier) for r in pyproject_extra("train") if r.name == "torch")
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('==')}" in stages["train"]
    assert '"torch==${TORCH_VERSION}"' in stages["train"]
    assert "--index-url" in stages["train"] and "whl/cpu" in stages["train"]
    serve = stages["serve"]
    assert re.search(r"^USER 10001$", serve, re.MULTILINE), "serve must run as a non-root user"
    assert "HEALTHCHECK" in serve and "service.server.healthcheck" in serve
    assert 'ENTRYPOINT ["vaeserve", "serve"]' in serve and "EXPOSE 8000" in serve and 'VOLUME ["/artifacts"]' in serve
    assert "VAESERVE_ARTIFACTS_DIR=/artifacts" in serve and "VAESERVE_HOST=0.0.0.0" in serve
    assert "torch" not in serve + stages["runtime-cpu"] + stages["runtime-gpu"]
    gpu = stages["runtime-gpu"]
    assert "FROM ${CUDA_IMAGE}" in gpu and '"onnxruntime-gpu==${ORT_GPU_VERSION}"' in gpu
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-\S+$", DOCKERFILE.read_text(), re.MULTILINE)


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes. Parents count as matches."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").replace("**/", "*")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_every_copied_file_is_in_the_build_context() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    sources = []
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            args = [a for a in line.split()[1:] if not a.startswith("--")]
            sources += args[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        files = [source] if (REPO / source).is_file() else [
            str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py") if "__pycache__" not in p.parts]
        assert files and not [f for f in files if dockerignore_excludes(f)], f"{source} is excluded by .dockerignore"
    assert dockerignore_excludes(".venv/bin/python") and dockerignore_excludes("runs/default/best.pt")
    assert dockerignore_excludes("service/__pycache__/app.cpython-311.pyc")


def test_pinned_requirements_satisfy_pyproject() -> None:
    serve, train = pins(REPO / "deploy/requirements/serve.txt"), pins(REPO / "deploy/requirements/train.txt")
    assert "torch" not in serve and "torch" not in train  # torch: its own layer, from the CPU index
    # The serve image has the tracing extra too: tracing is then a matter of OTEL_* variables.
    for extra, file, pinned in (("serve", "serve", serve), ("tracing", "serve", serve), ("train", "train", train)):
        for requirement in pyproject_extra(extra):
            if requirement.name == "torch":
                continue
            name = normalize(requirement.name)
            assert name in pinned, f"deploy/requirements/{file}.txt lacks {requirement}"
            assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} violates pyproject's {requirement}"


def test_train_script_is_posix_shell() -> None:
    script = REPO / "deploy/train-if-missing.sh"
    assert script.stat().st_mode & 0o111, "train-if-missing.sh must be executable"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0


def test_healthcheck_follows_readiness(server: ServerProcess) -> None:
    assert healthcheck.main({"port": server.port}) == 0
    assert healthcheck.main({"port": free_port()}) == 1  # nothing listens
    assert healthcheck.readyz_url(Settings(host="0.0.0.0", port=8000)) == "http://127.0.0.1:8000/readyz"
    assert healthcheck.readyz_url(Settings(host="::", port=8000)) == "http://[::1]:8000/readyz"


# ---- compose

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    check = dev_tool("check-jsonschema")
    done = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = compose()
    broken["services"]["api"]["depends_on"] = {"train": {"condition": "finished"}}  # not a Compose condition
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    done = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", str(tmp_path / "compose.yml")],
                          capture_output=True, text=True)
    assert done.returncode != 0


def test_compose_wires_the_services_together() -> None:
    spec = compose()
    services = spec["services"]
    assert {"train", "api", "api-gpu", "lb", "prometheus", "grafana"} == set(services)
    assert services["train"]["command"] == ["train-if-missing"] and services["train"]["build"]["target"] == "train"
    assert services["api"]["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "ports" not in services["api"], "replicas publish no host port, or --scale api=N would collide"
    assert services["api-gpu"]["profiles"] == ["gpu"]
    (device,) = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["api-gpu"]["build"]["args"]["RUNTIME"] == "gpu"
    assert "api" in services["api-gpu"]["networks"]["default"]["aliases"]
    for name in ("api", "api-gpu"):
        env = services[name]["environment"]
        assert env["VAESERVE_HOST"] == "0.0.0.0" and "artifacts:/artifacts:ro" in services[name]["volumes"]
        assert {k.removeprefix("VAESERVE_").lower() for k in env} <= set(Settings.model_fields), env
    assert "artifacts:/artifacts" in services["train"]["volumes"]
    named = set(spec["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{source}: bind-mounted but missing"
            else:
                assert source in named, f"volume {source} is not declared"


def test_compose_uses_the_configuration_files_the_tests_run() -> None:
    services = compose()["services"]
    assert "./deploy/nginx/templates:/etc/nginx/templates:ro" in services["lb"]["volumes"]
    assert NGINX_TEMPLATE.parent == REPO / "deploy/nginx/templates"
    lb_env = services["lb"]["environment"]
    assert lb_env["NGINX_ENVSUBST_FILTER"] == "^LB_"
    assert set(re.findall(r"\$\{(LB_\w+)\}", NGINX_TEMPLATE.read_text())) == {k for k in lb_env if k.startswith("LB_")}
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert PROMETHEUS_CONFIG == REPO / "deploy/prometheus/prometheus.yml"
    (sd,) = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["port"] == int(services["api"]["environment"]["VAESERVE_PORT"])


def test_containers_train_the_makefiles_default_model() -> None:
    makefile = re.search(r"^TRAIN_ARGS \?= (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile, "Makefile: no TRAIN_ARGS default"
    in_compose = re.fullmatch(r"\$\{TRAIN_ARGS:-(.+)\}", compose()["services"]["train"]["environment"]["TRAIN_ARGS"])
    (job,) = by_kind("Job")
    in_job = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}["TRAIN_ARGS"]
    assert in_compose and in_compose.group(1) == makefile.group(1) == in_job


# ---- nginx and Prometheus

def test_nginx_template_renders_for_compose(tmp_path: Path) -> None:
    env = compose()["services"]["lb"]["environment"]
    rendered = render_template(NGINX_TEMPLATE, tmp_path / "default.conf",
                               {k: v for k, v in env.items() if k.startswith("LB_")}).read_text()
    assert not re.search(r"\$\{LB_\w+\}", rendered)
    assert "server api:8000;" in rendered and "listen 80 default_server;" in rendered
    assert "$upstream_addr" in rendered and "$host" in rendered  # nginx's own variables survive envsubst
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in rendered


def test_prometheus_configs_pass_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    loopback = tmp_path / "prometheus.yml"
    loopback.write_text(yaml.safe_dump(prometheus_config_for(["127.0.0.1:8000", "127.0.0.1:8001"])))
    for config in (PROMETHEUS_CONFIG, loopback):
        done = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


ALERTS = REPO / "deploy/prometheus/alerts.yml"


def alert_rule(name: str) -> dict[str, Any]:
    (rule,) = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if r.get("alert") == name]
    return rule  # type: ignore[no-any-return]


def test_alert_rules_pass_promtool_and_fire_when_they_should(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yml" in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    drift, quota = alert_rule("VaeserveInputDrift"), alert_rule("VaeserveKeyOverQuota")
    cases = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # one replica sees drift from minute 2 on, the other does not: the model version drifts
            {"series": 'vaeserve_drift_detected{instance="a:8000",model="m",version="3"}', "values": "0 0 1x30"},
            {"series": 'vaeserve_drift_detected{instance="b:8000",model="m",version="3"}', "values": "0x32"},
            {"series": 'vaeserve_drift_detected{instance="a:8000",model="n",version="1"}', "values": "0x32"},
            # team-a: 1 refused per second beside 0.5 admitted; team-b: 0.1 refused beside 1 admitted
            {"series": 'vaeserve_key_quota_refusals_total{instance="a:8000",key="team-a",limit="requests"}',
             "values": "0+60x32"},
            {"series": 'vaeserve_key_requests_total{instance="a:8000",key="team-a"}', "values": "0+30x32"},
            {"series": 'vaeserve_key_quota_refusals_total{instance="a:8000",key="team-b",limit="requests"}',
             "values": "0+6x32"},
            {"series": 'vaeserve_key_requests_total{instance="a:8000",key="team-b"}', "values": "0+60x32"},
        ],
        "alert_rule_test": [
            {"eval_time": "11m", "alertname": "VaeserveInputDrift", "exp_alerts": []},  # pending: 9 of 10 min
            {"eval_time": "13m", "alertname": "VaeserveInputDrift", "exp_alerts": [{
                "exp_labels": {"model": "m", "version": "3", **drift["labels"]},
                "exp_annotations": {"summary": drift["annotations"]["summary"].replace("{{ $labels.model }}", "m")
                                    .replace("{{ $labels.version }}", "3"),
                                    "description": drift["annotations"]["description"]}}]},
            {"eval_time": "10m", "alertname": "VaeserveKeyOverQuota", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "VaeserveKeyOverQuota", "exp_alerts": [{
                "exp_labels": {"key": "team-a", **quota["labels"]},
                "exp_annotations": {"summary": quota["annotations"]["summary"].replace("{{ $labels.key }}", "team-a"),
                                    "description": quota["annotations"]["description"]}}]},
        ],
    }]}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(cases))
    done = subprocess.run([promtool, "test", "rules", str(tmp_path / "alerts_test.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- Grafana

def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queried_metrics() -> set[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    return {name for expr in exprs for name in re.findall(r"\b(vaeserve_\w+|up)\b(?=\s*[{\[)])", expr)}


def test_dashboard_is_a_valid_provisioned_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "vaeserve" and isinstance(board["schemaVersion"], int)
    datasources = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"] and panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] and t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    providers = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/vaeserve.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose()["services"]["grafana"]["volumes"]


def test_dashboard_covers_what_operators_watch() -> None:
    metrics = queried_metrics()
    for needed in ("vaeserve_requests_total", "vaeserve_request_latency_seconds_bucket",
                   "vaeserve_queue_wait_seconds_bucket", "vaeserve_batch_size_items_bucket",
                   "vaeserve_rejections_total", "vaeserve_anomaly_score_nats_bucket", "vaeserve_drift_detected",
                   "vaeserve_in_flight_requests"):
        assert needed in metrics, f"the dashboard has no panel on {needed}"
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def test_every_metric_the_dashboard_queries_is_exposed(server: ServerProcess, test_images: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:  # make every labelled series appear
        assert client.post("/encode", json={"inputs": test_images[:2].tolist()}).status_code == 200
        assert client.post("/anomaly-score", json={"inputs": test_images[:2].tolist()}).status_code == 200
        assert client.post("/sample", json={"n": 100_000}).status_code == 413  # a rejection
        exposition = client.get("/metrics").text
    exposed = {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}
    missing = {m for m in queried_metrics() if m != "up"} - exposed  # `up` is Prometheus's own
    assert not missing, f"the dashboard queries metrics the service does not expose: {missing}"


# ---- Kubernetes

def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    files = sorted(K8S.rglob("*.yaml"))
    return [(path, doc) for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_kubernetes_manifests_validate(version: str) -> None:
    documents = k8s_documents()
    assert {doc["kind"] for _, doc in documents} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "Job",
                                                     "PersistentVolumeClaim"}
    for path, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(REPO)} ({doc['kind']}): {exc}")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**documents[0][1], "spec": {"bogus": 1}}, version, strict=True)


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def test_kubernetes_deployments_probe_drain_and_bound_resources() -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    assert set(deployments) == {"vaeserve", "vaeserve-gpu"}
    (service,) = by_kind("Service")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert {k.removeprefix("VAESERVE_").lower() for k in env} <= set(Settings.model_fields), env
        defaults = Settings.model_fields
        grace = float(env.get("VAESERVE_SHUTDOWN_GRACE_S", defaults["shutdown_grace_s"].default))
        drain = float(env.get("VAESERVE_SHUTDOWN_DRAIN_TIMEOUT_S", defaults["shutdown_drain_timeout_s"].default))
        pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + grace + drain, name
        request_timeout = float(env.get("VAESERVE_REQUEST_TIMEOUT_S", defaults["request_timeout_s"].default))
        assert drain > request_timeout, f"{name}: a shutdown would cut off accepted requests"
        assert all(pod["metadata"]["labels"][k] == v for k, v in service["spec"]["selector"].items()), name
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "vaeserve-artifacts"
    gpu = deployments["vaeserve-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["image"] == "vaeserve:serve-gpu"
    hpas = by_kind("HorizontalPodAutoscaler")  # hpa.yaml (CPU) and custom-metrics/hpa.yaml, which replaces it
    assert len(hpas) == 2 and {h["metadata"]["name"] for h in hpas} == {"vaeserve"}
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vaeserve"}
    (job,) = by_kind("Job")
    job_pod = job["spec"]["template"]["spec"]
    assert job_pod["containers"][0]["command"] == ["train-if-missing"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in job_pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"vaeserve-artifacts"}


def test_the_load_hpa_scales_on_what_prometheus_adapter_publishes(server: ServerProcess) -> None:
    """custom-metrics/: each HPA metric is a rule of the adapter, and each rule's series exists in /metrics."""
    folder = K8S / "custom-metrics"
    (config_map,) = [d for d in yaml.safe_load_all((folder / "prometheus-adapter.yaml").read_text()) if d]
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    published = {rule["name"]["as"]: re.match(r"(\w+)\{", rule["seriesQuery"]).group(1) for rule in rules}  # type: ignore[union-attr]
    for rule in rules:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"} and "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert re.fullmatch(rule["name"]["matches"], published[rule["name"]["as"]])
    (hpa,) = [d for d in yaml.safe_load_all((folder / "hpa.yaml").read_text()) if d]
    scaled_on = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert scaled_on == set(published) == {"vaeserve_in_flight_requests", "vaeserve_queue_items"}
    exposition = httpx.get(server.url + "/metrics").text
    exposed = {family.name for family in text_string_to_metric_families(exposition)}
    assert set(published.values()) <= exposed, f"adapter rules on series the service does not export: {published}"


# ---- deploy/README.md

def settings_table() -> str:
    """The markdown table of every VAESERVE_* variable, from service/settings.py."""
    def shown(value: Any) -> str:
        if value is None:
            return "(unset)"
        if isinstance(value, bool):
            return str(value).lower()
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = shown(field.get_default(call_default_factory=True))
        rows.append(f"| `VAESERVE_{name.upper()}` | `{default}` | {(field.description or '').replace('|', '/')} |")
    return "\n".join(rows)


def test_readme_lists_every_setting() -> None:
    readme = (REPO / "deploy/README.md").read_text()
    expected = settings_table()
    assert expected in readme, f"deploy/README.md's settings table is out of date; paste:\n\n{expected}\n"
