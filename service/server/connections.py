"""HTTP connections as the service needs them: when a request arrived, and a shutdown that answers
every request whose bytes reached the server instead of resetting its connection.

uvicorn's shutdown closed the listening socket (the kernel resets the connections still in its
accept queue) and closed every connection without a request in progress, including keep-alive
connections whose next request was already on its way, and new ones whose first request had not
been read yet: 16 of 21,977 requests of a load test got a reset while the server stopped. Here,
once draining: every answer says `Connection: close`; an idle connection stays open until its
next request is answered (with `Connection: close`) or DRAIN_IDLE_S without one ends it; and before
the port closes, a socket filter stops the kernel from completing new handshakes (a new client is
refused, having sent nothing) while the connections already queued are accepted and answered.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.admission import RECEIVED

log = logging.getLogger("vaeserve.connections")
DRAIN_IDLE_S = 0.5  # once draining, an idle connection closes after this long without a request


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with an arrival time per request and a draining mode."""

    received = 0.0

    def data_received(self, data: bytes) -> None:
        # The earliest instant the server sees a request: the event loop may run it much later.
        self.received = time.monotonic()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {RECEIVED: {"monotonic_s": self.received}}

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if getattr(self.server_state, "draining", False) and self.cycle is not None:
            self.cycle.keep_alive = False  # its answer says Connection: close

    def shutdown(self) -> None:
        """uvicorn closes idle connections here; a request may be on its way on one, so only make sure it
        ends: the keep-alive timeout (armed after each answer; armed now for a connection that has not
        sent a request yet), or its next answer, which says Connection: close."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif not self.transport.is_closing():
            # A short idle timeout, not the full keep-alive: a request already on its way arrives within
            # it and is answered, and an idle upstream connection (nginx keeps some) does not hold the
            # shutdown for the whole keep-alive timeout (5 s; the loopback SIGTERM test measured it).
            if self.timeout_keep_alive_task is not None:
                self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = self.loop.call_later(min(self.timeout_keep_alive, DRAIN_IDLE_S),
                                                                self.timeout_keep_alive_handler)


# Classic BPF "ret #0": drop every packet. On a listening socket that is every new SYN (and the last
# ACK of a handshake not yet complete); connections already accepted by the kernel are not affected.
SO_ATTACH_FILTER = 26


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_DROP_ALL = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, 0))  # BPF_RET | BPF_K, k = 0
_TCP_INFO_UNACKED = struct.Struct("=I")  # tcp_info.tcpi_unacked at byte 24: a listener's accept queue length


def _accept_queue_length(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(_TCP_INFO_UNACKED.unpack_from(info, 24)[0])


async def answer_the_backlog(servers: Iterable[asyncio.Server], *, timeout_s: float = 2.0) -> int:
    """Before the port closes: no new handshakes, and wait (up to timeout_s) until the event loop has
    accepted every connection the kernel already queued, so they are answered, not reset. Linux only;
    elsewhere the port closes as before. Returns how many connections were waiting."""
    fds = [pseudo.fileno() for server in servers for pseudo in server.sockets or () if pseudo.type == socket.SOCK_STREAM]
    return await answer_the_queue(fds, timeout_s=timeout_s)


async def answer_the_queue(fds: Iterable[int], *, timeout_s: float = 2.0) -> int:
    """answer_the_backlog on listening sockets given by file descriptor (one whose accept loop is not
    asyncio's: Granian's runs in Rust threads and keeps accepting meanwhile)."""
    if not sys.platform.startswith("linux"):
        return 0
    listeners = []
    for fd in fds:
        sock = socket.socket(fileno=os.dup(fd))  # a second handle on the same socket
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(_SockFprog(1, _DROP_ALL)))
        except OSError as exc:
            log.warning("cannot stop new connections before closing the port (%s); queued ones may be reset", exc)
            sock.close()
            continue
        listeners.append(sock)
    queued = sum(_accept_queue_length(s) for s in listeners)
    deadline = time.monotonic() + timeout_s
    while listeners and any(_accept_queue_length(s) for s in listeners) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)  # the loop accepts them meanwhile
    await asyncio.sleep(0.05)  # and reads their first bytes, so they count as connections in progress
    for sock in listeners:
        sock.close()
    return queued
