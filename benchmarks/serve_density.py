"""Models per GiB: the server's resident memory with 0, 10, 50, 100 and 200 small models loaded
(float32 and int8), the cold-load time per model (first load, and a reload whose files were
verified before), random-model single-item throughput over 100 loaded models against one model
(same server, same run), and, in-process, what each session layout lever saves.

The models are one default-architecture checkpoint (a few training steps: only sizes matter here),
exported once with its int8 graphs and hard-linked under many names (a name is its folder's).

    flock /tmp/vaeserve-heavy.lock .venv/bin/python benchmarks/serve_density.py [--counts 10 50 100 200]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_load import wrk  # noqa: E402
from benchmarks.serve_models import DEFAULT_ARCHITECTURE, LUA, rss_mib, serve  # noqa: E402

ADMIN = {"authorization": "Bearer bench-admin"}


def build(tmp: Path, count: int) -> Path:
    """One checkpoint exported once (float32 and int8 graphs), linked as model-000 .. model-<count-1>."""
    from vaeserve.cli import main as vaeserve

    run, base = tmp / "run", tmp / "base"
    assert vaeserve(["train", "--out", str(run), *DEFAULT_ARCHITECTURE, "--precision", "fp32"]) == 0
    assert vaeserve(["export", "--checkpoint", str(run / "best.pt"), "--out", str(base), "--name", "model",
                     "--version", "1", "--quantize", "int8"]) == 0
    root = tmp / "repository"
    for i in range(count):
        version = root / f"model-{i:03d}" / "1"
        version.mkdir(parents=True)
        for item in base.iterdir():
            if item.suffix != ".pt":  # the TorchScript files are not read by an ONNX Runtime server
                os.link(item, version / item.name)
    return root


def memory(root: Path, tmp: Path, names: list[str], counts: list[int], precision: str,
           body: dict[str, object], **settings: str) -> dict[str, object]:
    """RSS at each count of loaded models (loaded by a first request each), load times, reloads."""
    proc, port = serve(root, tmp, f"memory-{precision}", preload="none", precision=precision,
                       admin_api_keys='["bench-admin"]', **settings)
    url = f"http://127.0.0.1:{port}"
    try:
        pid = proc.pid  # type: ignore[attr-defined]
        rss = {0: rss_mib(pid)}
        first: list[float] = []
        for i, name in enumerate(names[:max(counts)], start=1):
            started = time.perf_counter()
            assert httpx.post(f"{url}/models/{name}/anomaly-score", json=body, timeout=120).status_code == 200
            first.append(time.perf_counter() - started)
            if i in counts:
                time.sleep(0.5)  # the loader's last trim
                rss[i] = rss_mib(pid)
        listing = httpx.get(f"{url}/models").json()
        reported = listing["loaded_bytes"] / 2**20 / max(counts)
        reload = []  # unload and load again: the files are verified already
        for name in names[:10]:
            assert httpx.post(f"{url}/v2/repository/models/{name}/unload", headers=ADMIN).status_code == 200
            time.sleep(0.05)
            started = time.perf_counter()
            assert httpx.post(f"{url}/v2/repository/models/{name}/load", headers=ADMIN, timeout=60).status_code == 200
            reload.append(time.perf_counter() - started)
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(30)  # type: ignore[attr-defined]
    return {"rss": rss, "first_ms": 1e3 * float(np.median(first)), "reload_ms": 1e3 * float(np.median(reload)),
            "reported_mib": reported}


def throughput(root: Path, tmp: Path, names: list[str], body_path: Path, connections: int,
               duration_s: int) -> tuple[dict[str, float], dict[str, float]]:
    for label, chosen in (("one", names[:1]), ("all", names)):
        (tmp / f"{label}.lua").write_text(LUA.format(body=body_path, names=", ".join(f'"{n}"' for n in chosen)))
    proc, port = serve(root, tmp, "throughput", preload=",".join(names))
    try:
        for label in ("one", "all"):  # warm every path once, then measure
            wrk(port, connections, 2, tmp / f"{label}.lua")
        return (wrk(port, connections, duration_s, tmp / "one.lua"),
                wrk(port, connections, duration_s, tmp / "all.lua"))
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(30)  # type: ignore[attr-defined]


def probe_layout(artifacts: Path, arena: bool, share: bool, precision: str, count: int) -> float:
    """MiB per runtime of `count` loaded in this process with one session layout (a subprocess each)."""
    from service.core.memory import release_freed_memory, resident_bytes
    from service.core.runtime import SessionLayout, load_runtime
    from service.core.verified import VerifiedFiles

    layout, verified = SessionLayout(arena=arena, share_weights=share), VerifiedFiles()

    def one() -> object:
        runtime = load_runtime(artifacts, backend="onnxruntime", device="cpu", intra_op_threads=1,
                               precision=precision, layout=layout, verified=verified)
        runtime.warm_up()  # the old warm-up, batches of 1, 8 and 64, for every layout
        return runtime

    keep = [one()]
    gc.collect()
    release_freed_memory()
    before = resident_bytes() or 0
    keep += [one() for _ in range(count)]
    gc.collect()
    release_freed_memory()
    return ((resident_bytes() or 0) - before) / count / 2**20


def levers(artifacts: Path, count: int) -> None:
    print(f"\nin-process, {count} runtimes of one model (service/core/runtime.py SessionLayout), MiB per model:")
    print(f"{'arena':<8}{'shared weights':<16}{'float32':>9}{'int8':>9}")
    for arena, share in ((True, False), (False, False), (False, True)):
        cells = []
        for precision in ("float32", "int8"):
            out = subprocess.run([sys.executable, __file__, "--probe", str(artifacts), str(arena), str(share), precision,
                                  str(count)], capture_output=True, text=True, check=True, cwd=REPO).stdout
            cells.append(float(out.strip().splitlines()[-1]))
        print(f"{'on' if arena else 'off':<8}{'yes' if share else 'no':<16}{cells[0]:>9.1f}{cells[1]:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--throughput-models", type=int, default=100)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--mc-samples", type=int, default=16)
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--probe", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        artifacts, arena, share, precision, count = args.probe
        print(probe_layout(Path(artifacts), arena == "True", share == "True", precision, int(count)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="serve-density-"))
    count = max(*args.counts, args.throughput_models)
    root = build(tmp, count)
    names = sorted(p.name for p in root.iterdir())
    manifest = json.loads((root / names[0] / "1" / "manifest.json").read_text())
    item = np.random.default_rng(0).random(manifest["input"]["features"]).round(4).tolist()
    body = {"inputs": [item], "mc_samples": args.mc_samples}
    (tmp / "one.json").write_text(json.dumps(body))

    print(f"server RSS (MiB) with N models loaded, one uvicorn process, VAESERVE_PRECISION; {len(names)} models built")
    print(f"{'precision':<10}{'N':>5}{'RSS':>8}{'MiB/model':>11}{'models/GiB':>12}{'/models MiB':>13}")
    for precision in ("float32", "int8"):
        result = memory(root, tmp, names, args.counts, precision, body)
        rss = result["rss"]
        assert isinstance(rss, dict)
        for n, value in rss.items():
            per = (value - rss[0]) / n if n else float("nan")
            reported = f"{result['reported_mib']:.1f}" if n == max(args.counts) else ""
            print(f"{precision:<10}{n:>5}{value:>8.0f}{per:>11.1f}{1024 / per if n else float('nan'):>12.0f}"
                  f"{reported:>13}")
        print(f"{precision}: first request to a cold model (verify + load + warm + answer): p50 "
              f"{result['first_ms']:.0f} ms; reload of a verified version (unload, then load): p50 "
              f"{result['reload_ms']:.0f} ms")

    names = names[:args.throughput_models]
    single, multi = throughput(root, tmp, names, tmp / "one.json", args.connections, args.duration_s)
    print(f"\nsingle-item /anomaly-score, mc_samples={args.mc_samples}, {args.connections} connections, wrk -t1 "
          f"{args.duration_s}s, one server with {len(names)} models loaded (float32)")
    print(f"{'load':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for label, r in (("one model", single), (f"random of {len(names)} models", multi)):
        print(f"{label:<28}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['non2xx']:>9}")
    print(f"multi-model / single-model throughput: {multi['rps'] / single['rps']:.0%}")
    levers(root / names[0] / "1", 10)


if __name__ == "__main__":
    main()
