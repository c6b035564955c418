"""`python -m service` / `vaeserve serve`: one server process (the batcher is in-process), or `workers`
of them (service.server.workers), graceful on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.http.app import create_app
from service.http.requests import configure_logging
from service.server.accept_errors import AcceptErrors
from service.server.connections import answer_the_backlog, protocol_for
from service.settings import Settings

log = logging.getLogger("vaeserve.shutdown")


class GracefulServer(uvicorn.Server):
    """uvicorn that stops in the order a load balancer needs.

    On the first SIGTERM/SIGINT the registry stops accepting: /readyz and new requests answer 503 at
    once (nginx retries them on another replica), and every answer says `Connection: close`. After
    `shutdown_grace_s` the connections the kernel has queued are accepted and answered, the port
    closes, uvicorn waits up to `shutdown_drain_timeout_s` for the requests already accepted (idle
    connections end at their next answer or the keep-alive timeout, service.server.connections), and the
    app's lifespan drains the batch queues. A second signal skips what is left of the grace period.
    """

    def __init__(self, config: uvicorn.Config, *, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s
        self.signalled_at: float | None = None
        self._signal = signal.SIGTERM
        self._announced = False
        self._in_flight = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only plain attribute writes here; logging and metrics wait for on_tick.
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
            self._signal = signal.Signals(sig)
            self.app.state.registry.accepting = False
            self.server_state.draining = True  # type: ignore[attr-defined]  # read by connections.HttpProtocol
            self._in_flight = self.app.state.in_flight.count
            if self.grace_s > 0:
                return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.signalled_at is not None and not self._announced:
            self._announced = True
            self.app.state.metrics.ready.set(0)
            log.info("%s: readiness 503, refusing new requests, %d in flight; closing the port in %.1fs",
                     self._signal.name, self._in_flight, self.grace_s)
        grace_over = self.signalled_at is not None and time.monotonic() - self.signalled_at >= self.grace_s
        if grace_over and not self.should_exit:
            super().handle_exit(self._signal, None)
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Out of descriptors: a warning a minute and a counter, not a traceback per failed accept.
        asyncio.get_running_loop().set_exception_handler(AcceptErrors(self.app.state.metrics.accept_errors))
        await super().startup(sockets)

    async def shutdown(self, sockets: Any = None) -> None:
        self.server_state.draining = True  # type: ignore[attr-defined]
        queued = await answer_the_backlog(self.servers)
        if queued:
            log.info("answered the %d connections waiting to be accepted before closing the port", queued)
        await super().shutdown(sockets)
        if self.signalled_at is not None:
            log.info("stopped %.2fs after %s", time.monotonic() - self.signalled_at, self._signal.name)


def configure(settings: Settings, *, worker: int | None = None) -> None:
    """The service's log format (a worker's records say which worker wrote them)."""
    configure_logging(settings.access_log)  # first: every record from here on has request_id
    who = "" if worker is None else f" worker {worker}"
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s{who} [%(request_id)s]: %(message)s")


def serve_one(settings: Settings, *, reuse_port: bool = False) -> int:
    """One server process: the app with its batchers on uvicorn or Granian. reuse_port: bind with
    SO_REUSEPORT beside the other workers (service.server.workers)."""
    if settings.shutdown_drain_timeout_s < settings.request_timeout_s:
        log.warning("shutdown_drain_timeout_s (%.1fs) < request_timeout_s (%.1fs): a shutdown may cut off requests "
                    "it accepted (they get 500)", settings.shutdown_drain_timeout_s, settings.request_timeout_s)
    app = create_app(settings)
    if settings.server == "granian":
        try:
            from service.server.granian_server import run_granian
        except ImportError as exc:
            raise SystemExit(f"server=granian: {exc}; install the granian extra (pip install '.[granian]')") from None
        return run_granian(app, settings)
    # asyncio's loop, not uvloop: libuv accepts one connection per loop iteration (libuv#3696), and under
    # load an iteration took ~75 ms, so new connections waited seconds in the accept queue (a p99 of 3-4 s
    # at 1,000 connections, with timeouts), where no admission rule can see them. asyncio accepts up to the
    # backlog at once; at 64 connections it served as much (2,046 vs 1,868 req/s, wrk -d5s each).
    # The protocol bounds each request head (max_header_bytes, header_timeout_s) and idle connections
    # (keep_alive_timeout_s: it replaces uvicorn's timeout_keep_alive, whole seconds).
    protocol = protocol_for(settings, refusals=app.state.metrics.rejections)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, workers=1, http=protocol, loop="asyncio",
                            timeout_graceful_shutdown=math.ceil(settings.shutdown_drain_timeout_s))
    server = GracefulServer(config, app=app, grace_s=settings.shutdown_grace_s)
    server.run(sockets=[reuse_port_socket(settings.host, settings.port)] if reuse_port else None)
    # uvicorn re-raises the signal it caught, which ends the process with 128 + signal, except as PID 1 (a
    # container's entry point), where the kernel ignores it: give the same status there (143 for SIGTERM).
    return 128 + server._signal if server.signalled_at is not None else 0


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port beside the other workers' (the kernel spreads connections by hash)."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP (with 0, Nagle and
    # delayed ACKs held every answer 40 ms: 23 req/s at 1 connection).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock
