"""Triton's own load tool against vaeserve and the PyTriton peer: the same perf_analyzer command,
the same graph (a default-architecture model's scorer_core: x and K=16 noise draws in, every output
back), the same tensors (one item from --input-data), over HTTP on 127.0.0.1.

    flock /tmp/vaeserve-heavy.lock .venv/bin/python benchmarks/perf_analyzer.py \\
        --perf-analyzer /path/to/perf_analyzer [--concurrency-range 1:64:21]

perf_analyzer: the PyPI package `perf-analyzer` (0.1.0) is a placeholder without the tool; the
binary ships in the tritonclient 2.50.0 wheel (tritonclient-2.50.0.data/data/bin/perf_analyzer,
`pip download --no-deps tritonclient==2.50.0`) and needs libb64.so.0d (Debian: libb64-0d) and
libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel) on LD_LIBRARY_PATH, even on CPU.
The PyTriton peer runs in its own environment (see benchmarks/pytriton_peer.py).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_load import pytriton_missing, start  # noqa: E402
from benchmarks.serve_models import DEFAULT_ARCHITECTURE  # noqa: E402
from harness.servers import free_port  # noqa: E402

NAME = "fmnist"
MC_SAMPLES = 16


def build(tmp: Path) -> Path:
    from vaeserve.cli import main as vaeserve

    run, out = tmp / "run", tmp / NAME
    assert vaeserve(["train", "--out", str(run), *DEFAULT_ARCHITECTURE, "--precision", "fp32"]) == 0
    assert vaeserve(["export", "--checkpoint", str(run / "best.pt"), "--out", str(out), "--name", NAME,
                     "--version", "1"]) == 0
    return out


def input_data(artifacts: Path, path: Path) -> None:
    """One item and its K noise draws, in perf_analyzer's --input-data JSON."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    x = np.random.default_rng(0).random(manifest["input"]["features"], dtype=np.float32).round(4)
    eps = np.random.default_rng(0).standard_normal((MC_SAMPLES, manifest["config"]["latent_dim"]), dtype=np.float32)
    path.write_text(json.dumps({"data": [{"x": x.tolist(), "eps": {"content": eps.reshape(-1).tolist(),
                                                                   "shape": list(eps.shape)}}]}))


def perf(tool: str, model: str, port: int, data: Path, concurrency: str, interval_ms: int,
         stability: int) -> tuple[str, list[str]]:
    command = [tool, "-m", model, "-u", f"127.0.0.1:{port}", "-i", "http", "--input-data", str(data),
               "--concurrency-range", concurrency, "--measurement-interval", str(interval_ms), "--max-trials", "10",
               "--stability-percentage", str(stability)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({out.returncode}): {(out.stdout + out.stderr)[-2000:]}")
    rows = re.findall(r"^Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec", out.stdout, re.M)
    p99 = re.findall(r"p99 latency: (\d+) usec", out.stdout)
    table = [f"{c:>12}{float(t):>12.0f}{int(lat) / 1e3:>14.2f}{int(p) / 1e3:>10.2f}" for (c, t, lat), p in zip(rows, p99)]
    return " ".join(["perf_analyzer", *command[1:]]), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perf-analyzer", default="perf_analyzer")
    parser.add_argument("--artifacts", type=Path, default=None, help="an exported model (default: build one)")
    parser.add_argument("--concurrency-range", default="1:64:21")
    parser.add_argument("--measurement-interval-ms", type=int, default=3000)
    parser.add_argument("--stability-percentage", type=int, default=10, help="perf_analyzer's (its default: 10)")
    parser.add_argument("--triton-python", default=str(REPO / ".venv-triton" / "bin" / "python"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="perf-analyzer-"))
    artifacts = args.artifacts or build(tmp)
    data = tmp / "input.json"
    input_data(artifacts, data)
    model = json.loads((artifacts / "manifest.json").read_text())["model"]["name"] + ".scorer_core"
    servers = {"vaeserve": ([sys.executable, "-m", "service"], "/readyz",
                            lambda port: {"VAESERVE_ARTIFACTS_DIR": str(artifacts), "VAESERVE_PORT": str(port),
                                          "VAESERVE_LOG_LEVEL": "warning"})}
    missing = pytriton_missing(args.triton_python)
    if missing:
        print(f"PyTriton peer skipped: {missing}")
    else:
        servers["PyTriton"] = ([args.triton_python, str(REPO / "benchmarks" / "pytriton_peer.py"), "--artifacts",
                                str(artifacts), "--graph", model], f"/v2/models/{model}/ready",
                               lambda port: {})
    for label, (cmd, ready, env) in servers.items():
        port = free_port()
        if label == "PyTriton":
            cmd = [*cmd, "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
        proc = start(cmd, env(port), port, ready, tmp / f"{label}.log")
        try:
            command, table = perf(args.perf_analyzer, model, port, data, args.concurrency_range,
                                  args.measurement_interval_ms, args.stability_percentage)
        finally:
            proc.terminate()
            proc.wait(60)
        print(f"\n{label}: {command}")
        print(f"{'concurrency':>12}{'infer/s':>12}{'avg lat ms':>14}{'p99 ms':>10}")
        print("\n".join(table))


if __name__ == "__main__":
    main()
