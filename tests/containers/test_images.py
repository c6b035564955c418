"""The images themselves: train writes a servable model into a bind mount; serve has no torch, runs as 10001
with a read-only root, and its HEALTHCHECK follows readiness."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.core.runtime import load_runtime
from tests.containers.conftest import TrainRun
from tests.containers.engine import FIGURES, docker
from tests.containers.stack import HARDENED, answers, start_replica, wait_health, wait_ready, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first run builds the images
# The image's HEALTHCHECK command at a faster pace, so turning unhealthy takes seconds, not the
# Dockerfile's 60 s start period plus 3 × 10 s.
FAST_HEALTH = ["--health-interval", "1s", "--health-timeout", "3s", "--health-retries", "2",
               "--health-start-period", "5s"]


def test_train_image_trains_a_tiny_model_into_a_bind_mount(trained: TrainRun) -> None:
    runtime = load_runtime(trained.artifacts, backend="onnxruntime", device="cpu", intra_op_threads=1)  # every sha256
    assert runtime.version == "1"
    assert (trained.runs / "default/evaluation.json").is_file() and (trained.runs / "default/best.pt").is_file()
    assert {p.stat().st_uid for p in trained.artifacts.iterdir()} == {10001}, "written by the image's user"
    assert "train-if-missing: exported to /artifacts" in trained.output, trained.output[-2000:]
    FIGURES.lines.append(f"train image: trained, evaluated and exported a tiny model in {trained.seconds:.1f}s")


def test_serve_image_holds_no_torch_and_runs_as_uid_10001(serve_image: str) -> None:
    assert docker("image", "inspect", "--format", "{{.Config.User}}", serve_image).stdout.strip() == "10001"
    probe = ("import importlib.util as u, os; "
             "print(os.getuid(), u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)")
    out = docker("run", "--rm", "--network", "host", "--entrypoint", "python", serve_image, "-c", probe).stdout
    assert out.split() == ["10001", "True", "True"], out
    packages = docker("run", "--rm", "--network", "host", "--entrypoint", "pip", serve_image, "list",
                      "--format", "freeze").stdout
    assert "onnxruntime==" in packages and not re.search(r"^(torch|nvidia)", packages, re.MULTILINE | re.I), packages


def test_serve_image_root_filesystem_is_read_only_and_the_server_still_serves(serve_image: str,
                                                                            trained: TrainRun) -> None:
    done = docker("run", "--rm", "--network", "host", *HARDENED, "--entrypoint", "sh", serve_image, "-c",
                  "touch /opt/venv/x; echo $?; touch /tmp/x && echo tmp-ok", check=False)
    assert done.stdout.split() == ["1", "tmp-ok"], done.stdout + done.stderr
    replica = start_replica(serve_image, trained.artifacts)  # HARDENED: --read-only, tmpfs /tmp, no capabilities
    try:
        wait_ready(replica)
        response = httpx.post(f"{replica.url}/sample", json={"n": 2, "seed": 0}, timeout=10)
        assert response.status_code == 200 and len(response.json()["samples"]) == 2
        # ONNX Runtime keeps its cache under HOME=/tmp, the tmpfs, instead of failing to write it
        assert "Failed to persist" not in "".join(replica.logs())
        writes = docker("exec", replica.name, "find", "/tmp", "-type", "f").stdout.split()
        assert any(w.startswith("/tmp/.cache/") for w in writes), writes
    finally:
        replica.remove()


def test_healthcheck_turns_healthy_then_unhealthy_when_the_artifacts_are_gone(serve_image: str, trained: TrainRun,
                                                                            tmp_path: Path) -> None:
    artifacts = shutil.copytree(trained.artifacts, tmp_path / "artifacts")
    replica = start_replica(serve_image, artifacts, health=FAST_HEALTH)
    try:
        healthy_s = wait_health(replica, "healthy", timeout_s=60)
        for path in artifacts.iterdir():
            path.unlink()
        docker("restart", "--time", "30", replica.name, timeout_s=60)
        replica.started_at = time.monotonic()
        unhealthy_s = wait_health(replica, "unhealthy", timeout_s=60)
        state = replica.state()
        assert state["Running"] is True, "the server stays up, not ready, so it can be reloaded"
        assert answers(f"{replica.url}/readyz", 503)
        health = state["Health"]
        assert isinstance(health, dict)
        assert "answered 503" in health["Log"][-1]["Output"], health["Log"][-1]
        # and back: the same files again, a reload (SIGHUP), healthy without a restart
        shutil.copytree(trained.artifacts, artifacts, dirs_exist_ok=True)
        docker("kill", "--signal", "HUP", replica.name)
        wait_until(lambda: replica.health() == "healthy", what="healthy after SIGHUP", timeout_s=60,
                   container=replica)
    finally:
        replica.remove()
    FIGURES.lines.append(f"HEALTHCHECK (1 s interval): healthy {healthy_s:.1f}s after start; unhealthy "
                         f"{unhealthy_s:.1f}s after a restart without artifacts (5 s start period, 2 retries)")
