"""The `vaeserve` command has a home that matches both images: the training side runs without the
web stack, the service side without torch, and known failures end in one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.servers import REPO

# What each image lacks, made unimportable (a module set to None in sys.modules cannot be imported).
WITHOUT_WEB = ["fastapi", "starlette", "uvicorn", "httpx", "pydantic_settings", "prometheus_client"]
WITHOUT_TORCH = ["torch"]


def vaeserve(*args: str, without: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    code = (f"import sys\nfor name in {without!r}: sys.modules[name] = None\n"
            "from vaeserve.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_training_commands_need_no_web_stack(tmp_path: Path) -> None:
    for command in ("train", "evaluate", "export"):
        done = vaeserve(command, "--help", without=WITHOUT_WEB)
        assert done.returncode == 0 and "usage: vaeserve " + command in done.stdout, done.stderr
    missing = vaeserve("train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "run"),
                       without=WITHOUT_WEB)
    assert missing.returncode == 2 and missing.stderr.startswith("vaeserve train: error:"), missing.stderr
    assert "Traceback" not in missing.stderr


def test_service_commands_need_no_torch(tmp_path: Path) -> None:
    for command in ("serve", "score"):
        done = vaeserve(command, "--help", without=WITHOUT_TORCH)
        assert done.returncode == 0 and "usage: vaeserve " + command in done.stdout, done.stderr
    done = vaeserve("score", str(tmp_path / "items.npy"), "--url", "http://127.0.0.1:9", "--out",
                    str(tmp_path / "scores.csv"), without=WITHOUT_TORCH)
    assert done.returncode == 2 and "no such file" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "items.npy").write_bytes(b"")
    unreachable = vaeserve("score", str(tmp_path / "items.npy"), "--url", "http://127.0.0.1:9", "--out",
                           str(tmp_path / "scores.csv"), "--max-retries", "0", without=WITHOUT_TORCH)
    assert unreachable.returncode == 2 and "ConnectError" in unreachable.stderr, unreachable.stderr
