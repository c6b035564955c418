"""Load benchmark on loopback with wrk: the service (batching on / off) against two references.

Prints req/s and p50/p99 latency for single-item /anomaly-score requests at 1, 16 and 64
connections, for: the service with batching on; with batching off (max_batch_size=1); R1 (FastAPI
with a pydantic model, constant answer); R2 (bare ASGI + orjson, constant answer). All run one
uvicorn worker. Then items/s for 256-item requests against in-process ONNX Runtime.

    .venv/bin/python benchmarks/serve_load.py --artifacts artifacts [--duration-s 5]

What operating it costs (docs/operations.md), against batching-on in the same run: `access-log`
(VAESERVE_ACCESS_LOG=json, to a file) and `tracing` (every request traced, spans exported over
OTLP/HTTP to a sink in this process that answers 200):

    .venv/bin/python benchmarks/serve_load.py --only batching-on access-log tracing --connections 1 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import free_port  # noqa: E402

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


def start(cmd: list[str], env: dict[str, str], port: int, ready_path: str, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONPATH": str(REPO)}, cwd=REPO,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if ready_path == "" or httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code == 200:
                if ready_path == "":
                    httpx.post(f"http://127.0.0.1:{port}/anomaly-score", content=b'{"inputs": [[0]]}',
                               headers={"content-type": "application/json"}, timeout=1)
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start: {log.read_text()[-2000:]}")


class _OtlpSink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them (what a collector's receiver costs is not measured)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def otlp_sink() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _OtlpSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def wrk(port: int, connections: int, duration_s: int, lua: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(lua),
                          f"http://127.0.0.1:{port}/anomaly-score"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else ""}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def in_process_items_per_s(artifacts: Path, items: int, mc_samples: int, seconds: float = 3.0) -> float:
    import onnxruntime as ort

    manifest = json.loads((artifacts / "manifest.json").read_text())
    latent = manifest["config"]["latent_dim"]
    # The graph the service runs for the requests measured here (the default variant, elbo):
    # scorer_core, or scorer for models exported before it.
    graph = "scorer_core" if "scorer_core" in manifest["graphs"] else "scorer"
    session = ort.InferenceSession(str(artifacts / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((items, manifest["input"]["features"]), dtype=np.float32)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        eps = np.random.default_rng(done).standard_normal((items, mc_samples, latent), dtype=np.float32)
        session.run(None, {"x": x, "eps": eps})
        done += items
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--duration-s", type=int, default=5)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--only", nargs="*", default=None,
                        help="subset of: batching-on batching-off R1 R2 access-log tracing (the last two only when named)")
    parser.add_argument("--mc-samples", type=int, default=16, help="mc_samples of each request (the API default is 16)")
    parser.add_argument("--batch-wait-s", type=float, default=None, help="VAESERVE_BATCH_WAIT_TIMEOUT_S for batching-on")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    features = manifest["input"]["features"]
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    item = np.random.default_rng(0).random(features).round(4).tolist()
    (tmp / "one.json").write_text(json.dumps({"inputs": [item], "mc_samples": args.mc_samples}))
    (tmp / "many.json").write_text(json.dumps({"inputs": [item] * 256, "mc_samples": args.mc_samples}))
    for name in ("one", "many"):
        (tmp / f"{name}.lua").write_text(LUA.format(body=tmp / f"{name}.json"))
    python = sys.executable
    service = [python, "-m", "service"]
    uvicorn = [python, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    on = {"VAESERVE_MAX_BATCH_SIZE": "256",
          **({"VAESERVE_BATCH_WAIT_TIMEOUT_S": str(args.batch_wait_s)} if args.batch_wait_s is not None else {})}
    targets = {
        "batching-on": (service, on, "/readyz"),
        "batching-off": (service, {"VAESERVE_MAX_BATCH_SIZE": "1"}, "/readyz"),
        "access-log": (service, {**on, "VAESERVE_ACCESS_LOG": "json"}, "/readyz"),
        "R1": (uvicorn + ["benchmarks.reference_apps:r1"], {}, ""),
        "R2": (uvicorn + ["benchmarks.reference_apps:r2"], {}, ""),
    }
    if args.only and "tracing" in args.only:
        targets["tracing"] = (service, {**on, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink(),
                                        "OTEL_TRACES_SAMPLER": "always_on"}, "/readyz")
    opt_in = {"access-log", "tracing"}
    results: dict[str, dict[int, dict[str, float]]] = {}
    print(f"wrk -t1, {args.duration_s}s per point, single-item /anomaly-score ({features} floats, "
          f"mc_samples={args.mc_samples})")
    print(f"{'server':<14}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, (cmd, env, ready) in targets.items():
        if (args.only and name not in args.only) or (not args.only and name in opt_in):
            continue
        port = free_port()
        env = {**env, "VAESERVE_ARTIFACTS_DIR": str(args.artifacts), "VAESERVE_PORT": str(port),
               "VAESERVE_LOG_LEVEL": "warning"}
        full = cmd + (["--port", str(port)] if cmd[2] == "uvicorn" else [])
        proc = start(full, env, port, ready, tmp / f"{name}.log")
        try:
            results[name] = {}
            for conns in args.connections:
                r = wrk(port, conns, args.duration_s, tmp / "one.lua")
                results[name][conns] = r
                print(f"{name:<14}{conns:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['non2xx']:>9}", flush=True)
            if name == "batching-on":
                many = wrk(port, 4, args.duration_s, tmp / "many.lua")
                results["many"] = {4: many}
        finally:
            proc.terminate()
            proc.wait(30)
    c = max(args.connections)
    if "batching-on" in results:
        on = results["batching-on"][c]["rps"]
        print()
        for ref in ("R1", "R2", "batching-off"):
            if ref in results:
                print(f"batching-on / {ref:<13} at {c} connections: {on / results[ref][c]['rps']:.2f}x")
        for name in sorted(opt_in & set(results)):
            for conns in args.connections:
                cost = 1 - results[name][conns]["rps"] / results["batching-on"][conns]["rps"]
                print(f"{name} at {conns} connections: {results[name][conns]['rps']:.0f} req/s, {cost:+.1%} fewer "
                      f"than batching-on (p50 {results[name][conns]['p50_ms']:.2f} vs "
                      f"{results['batching-on'][conns]['p50_ms']:.2f} ms)")
        if "many" in results:
            served = results["many"][4]["rps"] * 256
            local = in_process_items_per_s(args.artifacts, 256, args.mc_samples)
            print(f"256-item requests: {served:.0f} items/s served vs {local:.0f} items/s in-process ONNX Runtime "
                  f"({served / local:.0%})")


if __name__ == "__main__":
    main()
