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

A connection also costs a descriptor and parser time before its request reaches the app, so the
request head is bounded here (uvicorn bounds neither): past `max_header_bytes` it gets 431, and a head
not complete `header_timeout_s` after its first byte gets 408 (a probe held 19,800 connections open
sending headers at 1 byte/s, and httptools' parse of one header grows quadratically: a 64 MB one took
2.9 s of CPU). An idle connection closes after `keep_alive_timeout_s`, also one that never sent a byte
(uvicorn arms that timer only after an answer, so such a connection stayed open for ever).
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
from asyncio import TimerHandle
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.http.admission import RECEIVED
from service.settings import Settings

log = logging.getLogger("vaeserve.connections")
DRAIN_IDLE_S = 0.5  # once draining, an idle connection closes after this long without a request
# After a 431 or 408: the answer goes out with a FIN, and what the client still sends is read and dropped
# (bounded) before the close; closing with unread bytes would reset the connection, and the client, still
# sending, would see the reset instead of the answer.
LINGER_S = 2.0
LINGER_BYTES = 8 << 20


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with an arrival time per request, a bounded request head (size and
    time), an idle timeout from the moment it opens, and a draining mode. protocol_for(settings) sets the
    bounds."""

    received = 0.0
    max_header_bytes = 64 * 1024
    header_timeout_s = 10.0
    keep_alive_timeout_s = 5.0
    refusals: Counter | None = None  # vaeserve_rejections_total, by reason

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.keep_alive_timeout_s  # type: ignore[assignment]  # uvicorn's is whole seconds
        self.in_head = True  # reading a request head (or waiting for one): since it opened, or the last request ended
        self.head_bytes = 0
        self.head_timer: TimerHandle | None = None
        self.refused = False  # answered 431 or 408: what else comes is dropped
        self.dropped_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Idle until its first byte: the keep-alive timeout applies (uvicorn arms it only after an answer).
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The earliest instant the server sees a request: the event loop may run it much later.
        self.received = time.monotonic()
        if self.refused:
            self.dropped_bytes += len(data)
            if self.dropped_bytes > LINGER_BYTES:
                self.transport.close()
            return
        if not self.in_head:  # a body: bounded by the app (max_body_bytes, body_read_timeout_s)
            super().data_received(data)
            return
        self._start_head_clock()
        # Only the bytes up to the limit reach the parser. A head that ends within them is served, and the
        # rest of the segment (its body) follows; one that does not gets 431. (A head that begins inside a
        # segment, after a pipelined request, is counted from the next segment: at most one read more.)
        room = self.max_header_bytes - self.head_bytes
        self.head_bytes += len(data)
        if len(data) <= room:
            super().data_received(data)
            return
        if room > 0:
            super().data_received(data[:room])
        if self.transport.is_closing():  # the parser refused it (400)
            return
        if self.in_head:
            self._refuse(431, f"request line and headers over {self.max_header_bytes} bytes", "header_too_large")
        else:
            super().data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {RECEIVED: {"monotonic_s": self.received}}
        self._start_head_clock()  # a head that began inside a segment, after a pipelined request

    def on_headers_complete(self) -> None:
        self.in_head, self.head_bytes = False, 0
        self._stop_head_clock()
        super().on_headers_complete()
        if getattr(self.server_state, "draining", False) and self.cycle is not None:
            self.cycle.keep_alive = False  # its answer says Connection: close

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True  # the next bytes are the next request's head

    def _start_head_clock(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self._refuse(408, f"request head not received within {self.header_timeout_s:g}s", "header_timeout")

    def _refuse(self, status: int, message: str, reason: str) -> None:
        """Answer status and close, lingering; after the answer in progress, if any (pipelining)."""
        self.refused = True
        self._stop_head_clock()
        if self.refusals is not None:
            self.refusals.labels(reason=reason).inc()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # that answer closes the connection; the partial head is dropped
            return
        self._unset_keepalive_if_required()
        body = orjson.dumps({"error": message, "error_type": reason})
        head = [STATUS_LINE[status]]
        head += [b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer and an end; its next bytes are dropped
        self.loop.call_later(LINGER_S, self.transport.close)

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


def protocol_for(settings: Settings, *, refusals: Counter | None = None) -> type[HttpProtocol]:
    """HttpProtocol with the settings' bounds (uvicorn builds one protocol per connection from a class)."""
    bounds = {"max_header_bytes": settings.max_header_bytes, "header_timeout_s": settings.header_timeout_s,
              "keep_alive_timeout_s": settings.keep_alive_timeout_s, "refusals": refusals}
    return type("BoundedHttpProtocol", (HttpProtocol,), bounds)


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
