"""deploy/train-if-missing.sh, the compose `train` service and the Kubernetes Job, run for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import REPO
from service.core.runtime import load_runtime

pytestmark = pytest.mark.slow
SCRIPT = REPO / "deploy/train-if-missing.sh"


def run_script(artifacts: Path, runs: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "VAESERVE_ARTIFACTS_DIR": str(artifacts), "RUN_DIR": str(runs / "default"),
           "TRAIN_ARGS": "--hidden 32 --latent-dim 2 --epochs 1 --max-steps 20",
           "EVALUATE_ARGS": "--iwae-k 8 --iwae-examples 16", "EXPORT_ARGS": "--version 1"}
    return subprocess.run(["sh", str(SCRIPT)], env=env, cwd=runs.parent, capture_output=True, text=True, timeout=300)


def test_train_if_missing_exports_once_then_leaves_the_volume_alone(tmp_path: Path) -> None:
    artifacts, runs = tmp_path / "artifacts", tmp_path / "runs"
    artifacts.mkdir()  # an empty named volume
    first = run_script(artifacts, runs)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (runs / "default/evaluation.json").is_file()
    runtime = load_runtime(artifacts, backend="onnxruntime", device="cpu", intra_op_threads=1)  # verifies sha256
    assert runtime.version == "1"
    exported_at = (artifacts / "manifest.json").stat().st_mtime_ns

    second = run_script(artifacts, runs)
    assert second.returncode == 0 and "nothing to do" in second.stdout, second.stdout + second.stderr
    assert (artifacts / "manifest.json").stat().st_mtime_ns == exported_at


def test_train_if_missing_stops_at_the_first_failure(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "VAESERVE_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "RUN_DIR": str(tmp_path / "runs"),
           "TRAIN_ARGS": "--epochs 0"}
    done = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "epochs" in done.stderr
    assert not (tmp_path / "artifacts/manifest.json").exists()
