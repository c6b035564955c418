"""`vaeserve serve --workers N`: N server processes on one port, each with its own models and batchers.

Each worker binds the port with SO_REUSEPORT, so the kernel spreads new connections over them by a
hash of the connection (never a batcher shared across processes: each worker batches what it got).
This process only supervises: it forwards SIGTERM/SIGINT to every worker, each stops in the order of
a single server (readiness 503, grace period, queued connections answered, drain), and it ends
when they all have, by the same signal. The workers write their metrics to PROMETHEUS_MULTIPROC_DIR
(a fresh temporary folder unless it is set) so that /metrics, whichever worker answers it, counts
every worker's requests (service.core.metrics).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from service.settings import Settings

log = logging.getLogger("vaeserve.workers")
MIN_UPTIME_S = 5.0  # a worker that dies sooner failed to start (bad settings, no model): stop, don't loop
PR_SET_PDEATHSIG = 1


def supervise(settings: Settings) -> int:
    """Start settings.workers workers and wait for them; the exit status of a single server."""
    if settings.port == 0:
        raise SystemExit("workers > 1 needs a fixed port: with port 0 each worker would get a port of its own")
    _port_is_free(settings.host, settings.port)
    if settings.intra_op_threads == 0 and settings.model_repository is None:
        # ONNX Runtime's default is a thread per core in every graph of every worker: N workers would run
        # N x cores threads on the cores (1 connection, 2 workers on 2 cores: 22 req/s instead of 507).
        settings = settings.model_copy(update={"intra_op_threads": max(1, (os.cpu_count() or 1) // settings.workers)})
    metrics_dir, owned = _metrics_dir()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this one's state
    workers: dict[int, tuple[BaseProcess, float]] = {}
    stopping: list[signal.Signals] = []

    def start(index: int) -> None:
        process = context.Process(target=_worker, args=(settings, index), name=f"vaeserve-worker-{index}")
        process.start()
        workers[index] = (process, time.monotonic())

    def signal_all(sig: int) -> None:
        for process, _ in workers.values():
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, sig)

    def forward(sig: int, frame: FrameType | None) -> None:
        stopping.append(signal.Signals(sig))  # the first one is the exit status; each one goes to every worker
        signal_all(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for index in range(settings.workers):
        start(index)
    log.info("%d workers on %s:%d (pids %s), metrics merged from %s", settings.workers, settings.host,
             settings.port, ", ".join(str(p.pid) for p, _ in workers.values()), metrics_dir)
    failed = 0
    while workers:
        wait([process.sentinel for process, _ in workers.values()], timeout=1.0)
        for index, (process, started) in list(workers.items()):
            if process.exitcode is None:
                continue
            del workers[index]
            _mark_dead(process.pid, metrics_dir)
            if stopping or failed:
                continue
            if time.monotonic() - started < MIN_UPTIME_S:
                log.error("worker %d (pid %s) exited with %s %.1fs after it started: stopping the others", index,
                          process.pid, process.exitcode, time.monotonic() - started)
                failed = 1
                signal_all(signal.SIGTERM)
            else:
                log.warning("worker %d (pid %s) exited with %s; starting another", index, process.pid,
                            process.exitcode)
                start(index)
    if owned:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failed or not stopping:
        return 1
    signal.signal(stopping[0], signal.SIG_DFL)  # end by the signal, as one uvicorn process does
    signal.raise_signal(stopping[0])
    return 128 + stopping[0]  # PID 1: the kernel ignored it


def _worker(settings: Settings, index: int) -> None:
    """A worker's main: one server on the shared port, for as long as the supervisor lives."""
    try:  # if the supervisor is killed outright, its workers get SIGTERM instead of serving on as orphans
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    from service.server.uvicorn_server import configure, serve_one  # imported here, with PROMETHEUS_MULTIPROC_DIR set

    configure(settings, worker=index)
    raise SystemExit(serve_one(settings, reuse_port=True))


def _port_is_free(host: str, port: int) -> None:
    """SO_REUSEPORT would join a port another server (of this user) listens on with it: refuse instead."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"cannot serve on {host}:{port}: {exc.strerror}") from None  # one line, exit 1


def _metrics_dir() -> tuple[Path, bool]:
    """PROMETHEUS_MULTIPROC_DIR emptied of an earlier run's files, or a new temporary folder (owned: True)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="vaeserve-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # the workers inherit it
    return path, True


def _mark_dead(pid: int | None, metrics_dir: Path) -> None:
    """A gone worker's live gauges leave the merge; its counters stay (they count what it served)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))
