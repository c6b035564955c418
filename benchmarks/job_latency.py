"""Online single-item latency with and without a bulk job running, in one run of one server.

A tiny model (the tests' recipe) is trained and served; rounds alternate: ROUNDS x (REQUESTS
single-item /anomaly-score requests alone, then a 60,000-item job from the input directory is
started and the same requests run beside it, then the job is cancelled). Prints p50 / p99 of each
side, their ratio, the job's rate beside the online requests, and the job's rate alone.

    flock /tmp/vaeserve-heavy.lock .venv/bin/python benchmarks/job_latency.py [--rounds 3] [--requests 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.latency import single_item_latencies, wait_for_job  # noqa: E402
from harness.servers import start_server  # noqa: E402
from training.data import FASHION_MNIST_DIR, load_fashion_mnist, read_idx  # noqa: E402
from vaeserve.cli import main as vaeserve  # noqa: E402

TINY = ["--hidden", "128", "--latent-dim", "8", "--epochs", "1", "--max-steps", "150", "--batch-size", "128",
        "--seed", "0", "--precision", "fp32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        assert vaeserve(["train", "--out", str(tmp / "run"), *TINY]) == 0
        assert vaeserve(["export", "--checkpoint", str(tmp / "run" / "best.pt"), "--out", str(tmp / "art"),
                         "--name", "tiny-vae", "--version", "1"]) == 0
        (tmp / "in").mkdir()
        images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").reshape(-1, 784)
        np.save(tmp / "in" / "train.npy", images.astype(np.float32) / 255.0)
        items = load_fashion_mnist().test_x[:64]
        server = start_server(tmp / "art", tmp / "logs", input_dir=tmp / "in")
        try:
            run(server.url, items, args.rounds, args.requests)
        finally:
            server.stop()


def run(url: str, items: np.ndarray, rounds: int, requests: int) -> None:
    alone, beside, rates = [], [], []
    for _ in range(rounds):
        alone.append(single_item_latencies(url, items, requests=requests))
        job = httpx.post(url + "/jobs", json={"path": "train.npy"}, timeout=60).json()
        wait_for_job(url, job["id"], until=("running",))
        before, start = httpx.get(f"{url}/jobs/{job['id']}").json()["done"], time.perf_counter()
        beside.append(single_item_latencies(url, items, requests=requests))
        after = httpx.get(f"{url}/jobs/{job['id']}").json()
        rates.append((after["done"] - before) / (time.perf_counter() - start))
        assert after["state"] == "running", "the job ended before the measurement did: use fewer requests"
        httpx.delete(f"{url}/jobs/{job['id']}")
    job = httpx.post(url + "/jobs", json={"path": "train.npy"}, timeout=60).json()
    done = wait_for_job(url, job["id"])
    a, b = np.concatenate(alone) * 1e3, np.concatenate(beside) * 1e3
    print(f"single-item /anomaly-score, {rounds} x {requests} requests each side, one connection, one at a time")
    print(f"alone:       p50 {np.percentile(a, 50):.2f} ms  p99 {np.percentile(a, 99):.2f} ms")
    print(f"beside job:  p50 {np.percentile(b, 50):.2f} ms  p99 {np.percentile(b, 99):.2f} ms")
    print(f"p99 ratio {np.percentile(b, 99) / np.percentile(a, 99):.3f}  (p99 per round alone "
          f"{[round(float(np.percentile(x * 1e3, 99)), 2) for x in alone]}, beside "
          f"{[round(float(np.percentile(x * 1e3, 99)), 2) for x in beside]})")
    print(f"job rate beside the online requests: {np.mean(rates):.0f} items/s; alone: {done['items_per_s']:.0f} "
          f"items/s (60,000 items, {done['state']})")


if __name__ == "__main__":
    main()
