"""torchrun with 2 processes on CPU (gloo) computes the same training as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.servers import REPO

pytestmark = pytest.mark.slow
TORCHRUN = Path(sys.executable).with_name("torchrun")


def train(out: Path, args: list[str], *, processes: int) -> str:
    """`vaeserve train` in one process, or under torchrun with `processes` ranks; returns its output."""
    command = [sys.executable, "-m", "vaeserve", "train", "--out", str(out), *args]
    if processes > 1:
        command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", "-m", "vaeserve", "train",
                   "--out", str(out), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["state_dict"]


def history(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(single: Path, parallel: Path) -> None:
    a, b = weights(single), weights(parallel)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    for x, y in zip(history(single), history(parallel), strict=True):
        for key in ("loss", "reconstruction_nll", "kl", "val_neg_elbo"):
            assert y[key] == pytest.approx(x[key], rel=1e-5), (key, x[key], y[key])


def test_torchrun_two_processes_match_one_on_fashion_mnist(tmp_path: Path) -> None:
    # 63 examples per step split 32/31 over the ranks, free bits on, dynamic binarization of the global batch.
    args = ["--hidden", "64", "--latent-dim", "4", "--epochs", "1", "--max-steps", "8", "--batch-size", "63",
            "--free-bits", "0.5", "--seed", "3", "--precision", "fp32"]
    train(tmp_path / "single", args, processes=1)
    output = train(tmp_path / "ddp", args, processes=2)
    assert "data-parallel training: 2 processes (gloo backend)" in output, output
    assert_same_training(tmp_path / "single", tmp_path / "ddp")


def test_torchrun_handles_a_last_batch_smaller_than_the_world(tmp_path: Path) -> None:
    # 120 feature rows: 110 train after the 1/12 validation split; batches of 109 leave a last batch of
    # one example, so rank 1 gets an empty slice (a batch mean there would be NaN).
    rng = np.random.default_rng(0)
    features = rng.standard_normal((120, 6)).astype(np.float32) @ rng.standard_normal((6, 12)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    args = ["--data", str(tmp_path / "features.npy"), "--hidden", "16", "--latent-dim", "2", "--epochs", "2",
            "--batch-size", "109", "--seed", "1", "--precision", "fp32"]
    train(tmp_path / "single", args, processes=1)
    train(tmp_path / "ddp", args, processes=2)
    assert all(np.isfinite(v.numpy()).all() for v in weights(tmp_path / "ddp").values())
    assert [h["step"] for h in history(tmp_path / "ddp")] == [2, 4]
    assert_same_training(tmp_path / "single", tmp_path / "ddp")
