"""`make run`'s script (deploy/run-default.sh) for real, with tiny recipes: a first model serves at once,
the full one is trained in the background and swapped in, and 8 clients across the swap see no failure."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from harness.load import clients_until_version, first_answer
from harness.servers import REPO, free_port


def test_make_run_serves_a_first_model_at_once_and_swaps_in_the_full_one_without_a_failed_request(
        tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "VAESERVE": str(REPO / ".venv" / "bin" / "vaeserve"), "VAESERVE_PORT": str(port),
           "MODELS": str(tmp_path / "models"), "ARTIFACTS": str(tmp_path / "artifacts"), "RUN_DIR": str(tmp_path / "full"), "QUICK_RUN_DIR": str(tmp_path / "first"),
           "QUICK_TRAIN_ARGS": "--epochs 1 --max-steps 40 --hidden 64 --latent-dim 4 --precision fp32",
           "TRAIN_ARGS": "--epochs 1 --max-steps 300 --hidden 64 --latent-dim 4 --precision fp32",
           "EVAL_ARGS": "--iwae-examples 20 --iwae-k 20", "PYTHONPATH": str(REPO)}
    log = (tmp_path / "make-run.out").open("wb")
    script = subprocess.Popen([str(REPO / "deploy" / "run-default.sh")], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        first_answer(url, timeout_s=120, alive=lambda: script.poll() is None)
        seen = asyncio.run(clients_until_version(url, "2", clients=8, timeout_s=180))
        assert set(seen) <= {"200 v1", "200 v2"}, f"a request failed across the swap: {seen}"
        assert seen["200 v1"] > 0 and seen["200 v2"] >= 20, seen
        assert (tmp_path / "models" / "fashion-mnist-vae" / ".full-recipe-exported").is_file()
        assert (tmp_path / "artifacts").resolve() == (tmp_path / "models" / "fashion-mnist-vae" / "2").resolve()
    finally:
        os.killpg(script.pid, signal.SIGTERM)
        script.wait(30)
    # A second run serves what is there at once: no training, no background job.
    rerun = subprocess.Popen([str(REPO / "deploy" / "run-default.sh")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert first_answer(url, timeout_s=30).json()["model"]["version"] == "2", "a second make run serves v2"
    finally:
        os.killpg(rerun.pid, signal.SIGTERM)
        output = rerun.communicate(timeout=30)[0].decode()
    assert "training" not in output, output
