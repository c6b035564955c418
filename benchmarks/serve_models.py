"""Many models in one service: throughput with every request to a random one of ten models against
the same load on one model (same server, same run), memory per loaded model, time to load one.

Builds a repository of ten one-class models (default architecture, a few training steps: only the
compute per request matters here) unless --repository names one, e.g. the one
`benchmarks/anomaly_fmnist.py --repository DIR` writes.

    .venv/bin/python benchmarks/serve_models.py [--repository DIR] [--duration-s 10] [--mc-samples 16]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_load import start, wrk  # noqa: E402
from harness.repository import build_repository  # noqa: E402
from harness.servers import free_port  # noqa: E402

DEFAULT_ARCHITECTURE = ["--hidden", "512", "512", "--latent-dim", "32", "--epochs", "1", "--max-steps", "20",
                        "--batch-size", "128", "--seed", "0"]
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
names = {{{names}}}
math.randomseed(7)
request = function()
  return wrk.format(nil, "/models/" .. names[math.random(#names)] .. "/anomaly-score")
end
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def serve(repository: Path, tmp: Path, name: str, **settings: str) -> tuple[object, int]:
    port = free_port()
    env = {"VAESERVE_MODEL_REPOSITORY": str(repository), "VAESERVE_PORT": str(port), "VAESERVE_LOG_LEVEL": "warning",
           **{f"VAESERVE_{k.upper()}": v for k, v in settings.items()}}
    return start([sys.executable, "-m", "service"], env, port, "/readyz", tmp / f"{name}.log"), port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=None, help="an existing repository (default: build one)")
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--mc-samples", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="serve-models-"))
    repository = args.repository
    if repository is None:
        repository, started = tmp / "repository", time.monotonic()
        build_repository(repository, tmp / "runs", list(range(10)), train_args=DEFAULT_ARCHITECTURE)
        print(f"built a repository of 10 models in {time.monotonic() - started:.0f}s: {repository}")
    names = sorted(p.name for p in repository.iterdir() if p.is_dir())
    manifest = json.loads(next((repository / names[0]).glob("*/manifest.json")).read_text())
    item = np.random.default_rng(0).random(manifest["input"]["features"]).round(4).tolist()
    (tmp / "one.json").write_text(json.dumps({"inputs": [item], "mc_samples": args.mc_samples}))
    for label, chosen in (("one", names[:1]), ("all", names)):
        (tmp / f"{label}.lua").write_text(LUA.format(body=tmp / "one.json",
                                                     names=", ".join(f'"{n}"' for n in chosen)))

    proc, port = serve(repository, tmp, "throughput")
    try:
        for label in ("one", "all"):  # warm every path once, then measure
            wrk(port, args.connections, 2, tmp / f"{label}.lua")
        single = wrk(port, args.connections, args.duration_s, tmp / "one.lua")
        multi = wrk(port, args.connections, args.duration_s, tmp / "all.lua")
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(30)  # type: ignore[attr-defined]
    print(f"\nsingle-item /anomaly-score, mc_samples={args.mc_samples}, {args.connections} connections, "
          f"wrk -t1 {args.duration_s}s, one server with {len(names)} models loaded")
    print(f"{'load':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for label, r in (("one model", single), (f"random of {len(names)} models", multi)):
        print(f"{label:<28}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['non2xx']:>9}")
    print(f"multi-model / single-model throughput: {multi['rps'] / single['rps']:.0%}")

    proc, port = serve(repository, tmp, "memory", preload="none")
    try:
        pid = proc.pid  # type: ignore[attr-defined]
        base = rss_mib(pid)
        body = {"inputs": [item], "mc_samples": args.mc_samples}
        cold = []
        for name in names:
            started = time.perf_counter()
            assert httpx.post(f"http://127.0.0.1:{port}/models/{name}/anomaly-score", json=body,
                              timeout=120).status_code == 200
            cold.append(time.perf_counter() - started)
        loaded = rss_mib(pid)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        load_sum = float(re.search(r"^vaeserve_model_load_seconds_sum (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(30)  # type: ignore[attr-defined]
    print(f"\nRSS: {base:.0f} MiB with no model loaded, {loaded:.0f} MiB with {len(names)}: "
          f"{(loaded - base) / len(names):.1f} MiB per loaded model")
    print(f"verify + load + warm one model: mean {load_sum / len(names) * 1e3:.0f} ms (vaeserve_model_load_seconds); "
          f"first request to a cold model: p50 {np.median(cold) * 1e3:.0f} ms, max {max(cold) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
