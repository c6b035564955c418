"""Real servers for tests and benchmarks: start `vaeserve serve` on 127.0.0.1 and wait for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_server(artifacts: Path, log_dir: Path, *, wait_ready: bool = True, timeout_s: float = 90,
                 **settings: object) -> ServerProcess:
    """`python -m service` with VAESERVE_* settings; waits until /readyz answers 200."""
    port = free_port()
    env = {**os.environ, "VAESERVE_ARTIFACTS_DIR": str(artifacts), "VAESERVE_PORT": str(port),
           "VAESERVE_HOST": "127.0.0.1", "PYTHONPATH": str(REPO)}
    settings.setdefault("data_dir", log_dir / "data")  # each server its own store unless a test shares one
    env.update({f"VAESERVE_{k.upper()}": str(v) for k, v in settings.items()})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO,
                               stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://127.0.0.1:{port}", port, process, log_path)
    if wait_ready:
        wait_until_ready(server, timeout_s=timeout_s)
    return server


def wait_for_http(url: str, process: subprocess.Popen[bytes], *, what: str, log_path: Path,
                  timeout_s: float = 30) -> None:
    """Until url answers 200; fail with the process's log if it exits or the time runs out (then kill it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise TimeoutError(f"{what} not ready within {timeout_s}s:\n{log_path.read_text(errors='replace')}")


def wait_until_ready(server: ServerProcess, *, timeout_s: float = 90, path: str = "/readyz") -> None:
    wait_for_http(server.url + path, server.process, what="server", log_path=server.log_path, timeout_s=timeout_s)
