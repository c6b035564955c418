"""Load benchmark on loopback with wrk: the service (batching on / off) against three peers.

Prints req/s, p50/p99 latency and the server's CPU ms per request (utime + stime of its process
and every live descendant, from /proc, sampled before and after each wrk run, over the requests
wrk completed) for single-item requests at 1, 16 and 64 connections (wrk -t1), rows:
  batching-on    vaeserve, /anomaly-score (VAESERVE_MAX_BATCH_SIZE=256)
  batching-off   vaeserve with max_batch_size=1
  PyTriton       Triton Inference Server + a PyTriton Python model running the same scorer graph on
                 ONNX Runtime, Triton's dynamic batching on (benchmarks/pytriton_peer.py), a KServe
                 v2 JSON request of one item; skipped, saying why, where nvidia-pytriton is missing
                 (`--triton-python`: its own environment, as it pins numpy < 2; see the bench extra)
  R1             FastAPI with a pydantic model, constant answer (benchmarks/reference_apps.py)
  R2             bare ASGI + orjson, constant answer
All but PyTriton run one uvicorn worker. wrk runs on the same cores: its own CPU ms per request
is printed too, and `others`, the cores anything else kept busy (a run shared with another job). Then, on batching-on, items/s for 256-item requests as JSON (`many-json`) and as
.npy (`many-npy`), against in-process ONNX Runtime on the same graph.

    .venv/bin/python benchmarks/serve_load.py --artifacts artifacts [--duration-s 5] [--mc-samples 1]

What operating it costs (docs/operations.md), against batching-on in the same run: `access-log`
(VAESERVE_ACCESS_LOG=json, to a file) and `tracing` (every request traced, spans exported over
OTLP/HTTP to a sink in this process that answers 200):

    .venv/bin/python benchmarks/serve_load.py --only batching-on access-log tracing --connections 1 64

The server and its processes (docs/operations.md), against batching-on in the same run: `granian`
(VAESERVE_SERVER=granian) and `workers-2` (VAESERVE_WORKERS=2, two processes on one port):

    .venv/bin/python benchmarks/serve_load.py --only batching-on granian workers-2 --connections 1 64

The int8 graphs (docs/performance.md), against batching-on in the same run: `int8`
(VAESERVE_PRECISION=int8; artifacts exported with `vaeserve export --quantize int8`):

    .venv/bin/python benchmarks/serve_load.py --only batching-on int8 --mc-samples 16 --connections 1 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.proc_cpu import machine_busy_s, tree_cpu_s  # noqa: E402
from harness.servers import free_port  # noqa: E402

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
wrk.body = io.open("{body}", "rb"):read("*a")
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


def wrk(port: int, connections: int, duration_s: int, lua: Path, *, path: str = "/anomaly-score",
        server_pid: int | None = None) -> dict[str, Any]:
    """One wrk run; with server_pid, the CPU ms per request of that process tree and of wrk itself,
    and how many cores anything else kept busy meanwhile (`others`: other jobs, the kernel's softirq
    work for loopback traffic, hypervisor steal; much above 0.1 on a quiet machine means a shared run)."""
    server_before, busy_before = tree_cpu_s(server_pid) if server_pid else 0.0, machine_busy_s()
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    wall = time.perf_counter()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(lua),
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    server_s = tree_cpu_s(server_pid) - server_before if server_pid else float("nan")
    busy_s, wall = machine_busy_s() - busy_before, time.perf_counter() - wall
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_s = wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime
    requests = max(int(re.search(r"(\d+) requests in", out).group(1)), 1)  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else "",
            "requests": requests, "server_ms": 1e3 * server_s / requests, "wrk_ms": 1e3 * wrk_s / requests,
            "others": (busy_s - server_s - wrk_s) / wall}


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


def write_requests(tmp: Path, features: int, mc_samples: int) -> dict[str, tuple[str, Path]]:
    """(path, wrk script) per kind of request: one item as vaeserve JSON and as KServe v2 JSON,
    256 items as JSON and as .npy (the same item, rounded as a client would send it)."""
    item = np.random.default_rng(0).random(features).round(4)
    bodies = {
        "one": ("/anomaly-score", "application/json", json.dumps({"inputs": [item.tolist()], "mc_samples": mc_samples})),
        "v2": ("/v2/models/vae/infer", "application/json", json.dumps(
            {"inputs": [{"name": "x", "shape": [1, features], "datatype": "FP32", "data": item.tolist()}]})),
        "many-json": ("/anomaly-score", "application/json",
                      json.dumps({"inputs": [item.tolist()] * 256, "mc_samples": mc_samples})),
        "many-npy": (f"/anomaly-score?mc_samples={mc_samples}", "application/x-npy", None),
    }
    np.save(tmp / "many-npy.npy", np.tile(item.astype(np.float32), (256, 1)), allow_pickle=False)
    requests = {}
    for name, (path, content_type, text) in bodies.items():
        body = tmp / (f"{name}.json" if text is not None else f"{name}.npy")
        if text is not None:
            body.write_text(text)
        (tmp / f"{name}.lua").write_text(LUA.format(content_type=content_type, body=body))
        requests[name] = (path, tmp / f"{name}.lua")
    return requests


def pytriton_missing(python: str) -> str:
    """Why the PyTriton row cannot run with this interpreter ('' when it can)."""
    if not Path(python).exists():
        return f"{python} not found (python -m venv .venv-triton && .venv-triton/bin/pip install -e '.[bench]')"
    check = subprocess.run([python, "-c", "import pytriton.triton, onnxruntime"], capture_output=True, text=True)
    return "" if check.returncode == 0 else f"{python} cannot import pytriton: {check.stderr.strip().splitlines()[-1]}"


def row(name: str, conns: int, r: dict[str, float]) -> str:
    return (f"{name:<14}{conns:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['non2xx']:>9}"
            f"{r['server_ms']:>12.3f}{r['wrk_ms']:>12.3f}{r['others']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--duration-s", type=int, default=5)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--only", nargs="*", default=None,
                        help="subset of: batching-on batching-off PyTriton R1 R2 access-log tracing granian "
                             "workers-2 int8 (the last five only when named)")
    parser.add_argument("--mc-samples", type=int, default=16, help="mc_samples of each request (the API default is 16)")
    parser.add_argument("--batch-wait-s", type=float, default=None, help="VAESERVE_BATCH_WAIT_TIMEOUT_S for batching-on")
    parser.add_argument("--triton-python", default=str(REPO / ".venv-triton" / "bin" / "python"),
                        help="interpreter with the bench extra (nvidia-pytriton) for the PyTriton row")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    features = manifest["input"]["features"]
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    requests = write_requests(tmp, features, args.mc_samples)
    python = sys.executable
    service = [python, "-m", "service"]
    uvicorn = [python, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    on = {"VAESERVE_MAX_BATCH_SIZE": "256",
          **({"VAESERVE_BATCH_WAIT_TIMEOUT_S": str(args.batch_wait_s)} if args.batch_wait_s is not None else {})}
    triton = [args.triton_python, str(REPO / "benchmarks" / "pytriton_peer.py"), "--artifacts", str(args.artifacts),
              "--mc-samples", str(args.mc_samples)]
    targets = {
        "batching-on": (service, on, "/readyz"),
        "batching-off": (service, {"VAESERVE_MAX_BATCH_SIZE": "1"}, "/readyz"),
        "access-log": (service, {**on, "VAESERVE_ACCESS_LOG": "json"}, "/readyz"),
        "granian": (service, {**on, "VAESERVE_SERVER": "granian"}, "/readyz"),
        "workers-2": (service, {**on, "VAESERVE_WORKERS": "2"}, "/readyz"),
        "int8": (service, {**on, "VAESERVE_PRECISION": "int8"}, "/readyz"),
        "PyTriton": (triton, {}, "/v2/models/vae/ready"),
        "R1": (uvicorn + ["benchmarks.reference_apps:r1"], {}, ""),
        "R2": (uvicorn + ["benchmarks.reference_apps:r2"], {}, ""),
    }
    if args.only and "tracing" in args.only:
        targets["tracing"] = (service, {**on, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink(),
                                        "OTEL_TRACES_SAMPLER": "always_on"}, "/readyz")
    opt_in = {"access-log", "tracing", "granian", "workers-2", "int8"}
    selected = [n for n in targets if (n in args.only if args.only else n not in opt_in)]
    if "PyTriton" in selected and (why := pytriton_missing(args.triton_python)):
        print(f"PyTriton row skipped: {why}")
        selected.remove("PyTriton")
    results: dict[str, dict[int, dict[str, float]]] = {}
    if "batching-on" in selected:  # first, on cores no server of this run holds
        busy, own = machine_busy_s(), time.process_time()
        local = in_process_items_per_s(args.artifacts, 256, args.mc_samples)
        others = (machine_busy_s() - busy - (time.process_time() - own)) / 3.0
        results["in-process"] = {0: {"items_per_s": local}}
        print(f"in-process ONNX Runtime, 256 items, K={args.mc_samples}: {local:.0f} items/s (others {others:.2f})")
    print(f"wrk -t1, {args.duration_s}s per point, single-item /anomaly-score ({features} floats, "
          f"mc_samples={args.mc_samples}; PyTriton: the same item as KServe v2 JSON)")
    print(f"server CPU: utime+stime of the server's process tree per completed request; wrk runs on the same "
          f"{os.cpu_count()} cores (its own CPU per request beside it); others: cores busy with anything else")
    print(f"{'server':<14}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'srv ms/req':>12}"
          f"{'wrk ms/req':>12}{'others':>8}")
    for name in selected:
        cmd, env, ready = targets[name]
        port = free_port()
        env = {**env, "VAESERVE_ARTIFACTS_DIR": str(args.artifacts), "VAESERVE_PORT": str(port),
               "VAESERVE_LOG_LEVEL": "warning"}
        full = cmd + (["--port", str(port)] if cmd[2] == "uvicorn" else [])
        if name == "PyTriton":
            full = cmd + ["--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
        path, lua = requests["v2" if name == "PyTriton" else "one"]
        proc = start(full, env, port, ready, tmp / f"{name}.log")
        try:
            results[name] = {}
            for conns in args.connections:
                r = wrk(port, conns, args.duration_s, lua, path=path, server_pid=proc.pid)
                results[name][conns] = r
                print(row(name, conns, r), flush=True)
            if name == "batching-on":  # 256-item requests, JSON and .npy
                for kind in ("many-json", "many-npy"):
                    path, lua = requests[kind]
                    results[kind] = {4: wrk(port, 4, args.duration_s, lua, path=path, server_pid=proc.pid)}
                    print(row(kind, 4, results[kind][4]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    summary(results, args)


def summary(results: dict[str, dict[int, dict[str, float]]], args: argparse.Namespace) -> None:
    c = max(args.connections)
    if "batching-on" not in results:
        return
    on = results["batching-on"][c]
    print()
    for ref in ("PyTriton", "R1", "R2", "batching-off"):
        if ref in results:
            print(f"batching-on / {ref:<13} at {c} connections: {on['rps'] / results[ref][c]['rps']:.2f}x req/s, "
                  f"{on['server_ms'] / results[ref][c]['server_ms']:.2f}x server CPU per request")
    for name in sorted({"access-log", "tracing"} & set(results)):
        for conns in args.connections:
            cost = 1 - results[name][conns]["rps"] / results["batching-on"][conns]["rps"]
            print(f"{name} at {conns} connections: {results[name][conns]['rps']:.0f} req/s, {cost:+.1%} fewer "
                  f"than batching-on (p50 {results[name][conns]['p50_ms']:.2f} vs "
                  f"{results['batching-on'][conns]['p50_ms']:.2f} ms)")
    for conns in args.connections if "int8" in results else ():
        print(f"int8 / batching-on at {conns} connections (K={args.mc_samples}): "
              f"{results['int8'][conns]['rps'] / results['batching-on'][conns]['rps']:.2f}x req/s, "
              f"{results['int8'][conns]['server_ms'] / results['batching-on'][conns]['server_ms']:.2f}x server CPU "
              "per request")
    if "many-json" in results:
        local = results["in-process"][0]["items_per_s"]
        for kind in ("many-json", "many-npy"):
            served = results[kind][4]["rps"] * 256
            print(f"256-item requests ({kind[5:]}, K={args.mc_samples}): {served:.0f} items/s served vs {local:.0f} "
                  f"items/s in-process ONNX Runtime ({served / local:.0%})")


if __name__ == "__main__":
    main()
