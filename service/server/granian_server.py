"""`vaeserve serve --server granian`: the same app on Granian's Rust HTTP server (ASGI), in this process.

Granian's embedded server runs the workers' accept loop and HTTP parsing in Rust threads and calls
the app on this process's asyncio loop, so the lifespan (model loading, queue drain) and the
batcher are the same as under uvicorn. The shutdown keeps uvicorn's order (service.server.uvicorn_server):
readiness 503 and `Connection: close` on every answer from the first signal, the port closed after
`shutdown_grace_s` once the connections the kernel queued are accepted, then the lifespan drains.
What Granian does not give (docs/operations.md): the arrival stamp of connections.HttpProtocol (so
the admission rule for requests that waited too long before being read does not apply; the
in-flight bound does), the short idle timeout for keep-alive connections once draining
(Granian closes idle connections when it stops), a 408 for a head too slow (hyper closes the connection
without an answer, and one timeout bounds both the head and an idle connection), and a counter and
one warning a minute when descriptors run out (Granian logs each failed accept, a few a second).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.net import SocketSpec
from granian.server.embed import Server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server.connections import answer_the_queue
from service.settings import Settings

log = logging.getLogger("vaeserve.shutdown")


class _Server(Server):
    """Granian's embedded server on a listening socket built here, so the shutdown can reach its queue."""

    listener_fd: int | None = None

    def _init_shared_socket(self) -> None:
        holder = SocketSpec(self.bind_addr, self.bind_port, self.backlog).build()  # SO_REUSEPORT on Linux
        self._shd, self._sfd, self._ssp = holder, holder.get_fd(), None  # type: ignore[assignment]  # typed None
        self.listener_fd = int(holder.get_fd())


class _Draining:
    """Counts the requests in progress, and once draining makes every answer say `Connection: close`
    (hyper honours it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.draining = False
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.in_flight += 1
        try:
            if not self.draining or scope["type"] != "http":
                await self.app(scope, receive, send)
                return

            async def send_closing(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
                await send(message)

            await self.app(scope, receive, send_closing)
        finally:
            self.in_flight -= 1


def run_granian(app: FastAPI, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; then, as uvicorn does, end by the signal (128 + signal as PID 1)."""
    logging.getLogger("_granian").addFilter(lambda r: "experimental" not in r.getMessage())  # said once, here
    sig = asyncio.run(_serve(app, settings))
    if sig is None:
        return 0
    signal.signal(sig, signal.SIG_DFL)
    signal.raise_signal(sig)
    return 128 + int(sig)  # PID 1: the kernel ignored the signal


async def _serve(app: FastAPI, settings: Settings) -> signal.Signals | None:
    # ASGINL: no lifespan from Granian; it runs here, so the queues drain once the port is closed, while
    # Granian still holds the connections whose answers they produce (Granian ends its worker only
    # after every request in progress has finished).
    draining = _Draining(app)
    # hyper's read buffer bounds the head (431 past it; bodies stream through it). Its header read timeout
    # runs from when the connection waits for a head (opened, or after an answer) and closes it without
    # an answer: it is the idle timeout too, so it takes the smaller of the two (whole ms, at most 60 s).
    head_timeout_s = min(settings.header_timeout_s, settings.keep_alive_timeout_s)
    http1 = HTTP1Settings(header_read_timeout=min(60_000, max(1, round(head_timeout_s * 1000))),
                          max_buffer_size=settings.max_header_bytes)
    server = _Server(draining, address=settings.host, port=settings.port, interface=Interfaces.ASGINL,
                     http=HTTPModes.http1, http1_settings=http1, websockets=False, log_access=False,
                     log_level=LogLevels(settings.log_level.lower()))
    loop = asyncio.get_running_loop()
    signalled: dict[str, Any] = {}
    port_closed = asyncio.Event()

    async def close_port() -> None:
        if signalled.get("closing"):
            return
        signalled["closing"] = True
        queued = await answer_the_queue([server.listener_fd] if server.listener_fd is not None else [])
        if queued:
            log.info("answered the %d connections waiting to be accepted before closing the port", queued)
        server.stop()
        port_closed.set()

    def on_signal(sig: signal.Signals) -> None:
        if signalled:  # a second signal skips what is left of the grace period
            signalled["timer"].cancel()
            loop.create_task(close_port())
            return
        signalled.update(sig=sig, at=time.monotonic())
        app.state.registry.accepting = False
        draining.draining = True
        app.state.metrics.ready.set(0)
        log.info("%s: readiness 503, refusing new requests, %d in flight; closing the port in %.1fs", sig.name,
                 draining.in_flight, settings.shutdown_grace_s)
        signalled["timer"] = loop.call_later(settings.shutdown_grace_s, lambda: loop.create_task(close_port()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    async with app.router.lifespan_context(app):  # loads the models in the background; drains the queues at exit
        serving = loop.create_task(server.serve())
        await asyncio.wait([serving, loop.create_task(port_closed.wait())], return_when=asyncio.FIRST_COMPLETED)
        await _until(lambda: draining.in_flight == 0, settings.shutdown_drain_timeout_s)
    if not signalled and serving.done():
        serving.result()  # Granian stopped by itself: its error (the port in use, ...)
    await _until(serving.done, settings.shutdown_drain_timeout_s)  # the answers the drain produced go out
    if not serving.done():
        log.warning("%d requests still open %.1fs after the drain; exiting", draining.in_flight,
                    settings.shutdown_drain_timeout_s)
    if not signalled:
        return None
    log.info("stopped %.2fs after %s", time.monotonic() - signalled["at"], signalled["sig"].name)
    return signalled["sig"]  # type: ignore[no-any-return]


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
