"""Fixtures of the container tests: the engine (or a plain skip), each image built once per run, the artifacts
the train image writes into a bind-mounted folder. VAESERVE_CONTAINER_TESTS=require (set by .ci/run) turns the
skip into a failure: CI always runs these tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.servers import REPO
from tests.containers.engine import (
    DOCKER,
    FIGURES,
    IMAGES,
    LABEL,
    base_image,
    build,
    docker,
    engine_problem,
    local_torch_index,
)
from tests.containers.stack import RUN_ID, remove_this_runs_containers

REQUIRED = os.environ.get("VAESERVE_CONTAINER_TESTS") == "require"
# A tiny model, and an evaluation and export to match: the train image's own script runs them.
TRAIN_ENV = {"TRAIN_ARGS": "--hidden 64 --latent-dim 8 --epochs 1 --max-steps 30 --batch-size 128 --seed 0",
             "EVALUATE_ARGS": "--iwae-k 8 --iwae-examples 16", "EXPORT_ARGS": "--name tiny-vae --version 1"}


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    problem = engine_problem()
    if problem is not None:
        message = (f"no Docker engine here ({problem}): the container tests did not run. As root with docker.io "
                   f"installed, tests/containers/start-dockerd.sh starts one (make test calls it)")
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield
    finally:
        remove_this_runs_containers()
        # Earlier builds of the same tags, now untagged; only images the tests labelled.
        docker("image", "prune", "--force", "--filter", f"label={LABEL}=1", check=False, timeout_s=300)


@pytest.fixture(scope="session")
def build_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docker-builds")


@pytest.fixture(scope="session")
def base(engine: None, build_logs: Path) -> str:
    return base_image(build_logs)


@pytest.fixture(scope="session")
def serve_image(base: str, build_logs: Path) -> str:
    build("vaeserve:serve", context=REPO, target="serve", build_args={"PYTHON_IMAGE": base}, log_dir=build_logs)
    return "vaeserve:serve"


@pytest.fixture(scope="session")
def train_image(base: str, build_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    args = {"PYTHON_IMAGE": base}
    with local_torch_index(tmp_path_factory.mktemp("torch-index")) as index_url:
        if index_url is not None:  # this machine's CPU wheel instead of the CPU wheel index
            args["TORCH_INDEX_URL"] = index_url
        build("vaeserve:train", context=REPO, target="train", build_args=args, log_dir=build_logs)
    return "vaeserve:train"


@pytest.fixture(scope="session")
def nginx_image(base: str, build_logs: Path) -> str:
    tag = "vaeserve-test/nginx:bookworm"
    build(tag, context=IMAGES, dockerfile=IMAGES / "nginx.Dockerfile", build_args={"BASE_IMAGE": base},
          log_dir=build_logs)
    return tag


@pytest.fixture(scope="session")
def prometheus_image(base: str, build_logs: Path) -> str:
    tag = "vaeserve-test/prometheus:bookworm"
    build(tag, context=IMAGES, dockerfile=IMAGES / "prometheus.Dockerfile", build_args={"BASE_IMAGE": base},
          log_dir=build_logs)
    return tag


@dataclass
class TrainRun:
    artifacts: Path
    runs: Path
    seconds: float
    output: str


@pytest.fixture(scope="session")
def trained(train_image: str, tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    """The train image's default command (train-if-missing) into bind-mounted folders; it must exit 0."""
    root = tmp_path_factory.mktemp("train-image")
    artifacts, runs = root / "artifacts", root / "runs"
    for folder in (artifacts, runs):
        folder.mkdir()
        folder.chmod(0o777)  # the image runs as uid 10001
    env = [arg for name, value in TRAIN_ENV.items() for arg in ("--env", f"{name}={value}")]
    started = time.monotonic()
    done = subprocess.run([DOCKER, "run", "--rm", "--network", "host", "--label", f"{LABEL}={RUN_ID}",
                           "--volume", f"{artifacts}:/artifacts", "--volume", f"{runs}:/runs", *env, train_image],
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the train image exited {done.returncode}:\n{output[-4000:]}"
    return TrainRun(artifacts, runs, seconds, output)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/containers/"):
        FIGURES.seconds += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (FIGURES.builds or FIGURES.lines):
        return
    write = terminalreporter.write_line
    terminalreporter.section("container figures")
    for record in FIGURES.builds:
        cached = f", {record.cached_steps}/{record.steps} steps cached" if record.steps else ""
        note = f" ({record.note})" if record.note else ""
        write(f"image {record.image}: {record.size_bytes / 1e6:.0f} MB, built in {record.seconds:.1f}s{cached}{note}")
    for line in FIGURES.lines:
        write(line)
    write(f"container tests: {FIGURES.seconds:.0f}s in all (setup, builds and teardown included)")
