"""benchmarks/gpu_check.py runs in CI on its tiny setting, on the CPU, with torch and numpy alone: the
service's packages, ONNX, ONNX Runtime and tqdm are made unimportable, as on a bare GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ABSENT = ("fastapi", "starlette", "uvicorn", "granian", "pydantic", "pydantic_settings", "httpx", "prometheus_client",
          "orjson", "simdjson", "PIL", "onnx", "onnxscript", "onnxruntime", "matplotlib", "tqdm", "pandas", "pyarrow")


def test_gpu_check_tiny_runs_on_a_cpu_with_torch_alone(tmp_path: Path) -> None:
    blockers = tmp_path / "absent"
    blockers.mkdir()
    for name in ABSENT:  # first on the path: `import fastapi` finds this and fails as a missing package does
        message = f"no module named {name!r} (blocked)"
        (blockers / f"{name}.py").write_text(f"raise ModuleNotFoundError({message!r}, name={name!r})\n")
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(blockers), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--json", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["onnxruntime_providers"] is None
    assert report["training"][0]["examples_per_s"] > 0 and report["nll"][0]["nll_mean"] > 0
    assert {(r["graph"], r["batch"]) for r in report["serving"]} == {(g, b) for g in ("encoder", "scorer_core")
                                                                     for b in (1, 8)}
    assert all(r["items_per_s"] > 0 for r in report["serving"])
    assert "examples/s" in done.stdout and "items/s" in done.stdout
