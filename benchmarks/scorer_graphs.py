"""What the neighbour bank costs: items/s of `scorer` (every variant) and `scorer_core` (no neighbour
outputs) on in-process ONNX Runtime, single items and batches of 256, K = 16 and K = 1. The two
graphs are timed in alternation, three rounds each, and the median is printed.

    .venv/bin/python benchmarks/scorer_graphs.py [--artifacts artifacts] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

GRAPHS = ("scorer", "scorer_core")


def items_per_second(session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float) -> float:
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        runs += 1
    return runs * len(feeds["x"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    args = parser.parse_args()
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    latent_dim, n_features = manifest["config"]["latent_dim"], manifest["input"]["features"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {g: ort.InferenceSession(str(args.artifacts / f"{g}.onnx"), options, providers=["CPUExecutionProvider"])
                for g in GRAPHS}
    rng = np.random.default_rng(0)
    print(f"{manifest['model']['name']} {manifest['model']['version']}, {args.threads} thread(s)")
    for batch, k in ((1, 16), (256, 16), (1, 1), (256, 1)):
        feeds = {"x": rng.random((batch, n_features), dtype=np.float32),
                 "eps": rng.standard_normal((batch, k, latent_dim), dtype=np.float32)}
        rates: dict[str, list[float]] = {g: [] for g in GRAPHS}
        for _ in range(3):
            for graph, session in sessions.items():
                rates[graph].append(items_per_second(session, feeds, args.seconds))
        full, core = (float(np.median(rates[g])) for g in GRAPHS)
        print(f"batch {batch:3d}, K = {k:2d}: scorer {full:8.0f} items/s, scorer_core {core:8.0f} items/s "
              f"({core / full:.2f}x)")


if __name__ == "__main__":
    main()
