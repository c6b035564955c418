"""A model repository of one-class Fashion-MNIST models, one per class, each trained for real and
exported with `vaeserve export --repository` (tests and benchmarks/serve_models.py).

    python -m harness.repository ROOT RUNS CLASS... [-- TRAIN_ARGS]   (one worker's share)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "64", "--latent-dim", "4", "--epochs", "1", "--max-steps", "40", "--batch-size", "128",
        "--seed", "0", "--precision", "fp32"]


def model_name(cls: int) -> str:
    return f"class-{cls}"


def build_repository(root: Path, runs: Path, classes: list[int], *, train_args: list[str] = TINY,
                     jobs: int = 2) -> None:
    """Train and export one model per class into root/class-<c>/1/, in `jobs` processes."""
    shares = [classes[i::jobs] for i in range(jobs) if classes[i::jobs]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # one core per worker
    workers = [subprocess.Popen([sys.executable, "-m", "harness.repository", str(root), str(runs),
                                 *map(str, share), "--", *train_args], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for share in shares]
    for worker in workers:
        _, err = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"building the repository failed:\n{err.decode(errors='replace')[-3000:]}")


def _build_share(root: Path, runs: Path, classes: list[int], train_args: list[str]) -> None:
    import torch

    from vaeserve.cli import main

    torch.set_num_threads(1)
    for cls in classes:
        run = runs / model_name(cls)
        assert main(["train", "--out", str(run), "--normal-classes", str(cls), *train_args]) == 0
        assert main(["export", "--checkpoint", str(run / "best.pt"), "--repository", str(root),
                     "--name", model_name(cls), "--version", "1"]) == 0


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--") if "--" in args else len(args)
    _build_share(Path(args[0]), Path(args[1]), [int(c) for c in args[2:split]], args[split + 1:])
