"""Running out of file descriptors, said once a minute instead of once per failed accept.

At the descriptor limit (`ulimit -n`) asyncio logs every failed accept() with a traceback, and Python
3.11 retries the rest of the backlog in the same loop iteration after each failure: a probe's log grew
by 136,835 tracebacks (61 MB) in 40 s, and a test here wrote 159,456 lines in 3 s. The connections wait
in the kernel's accept queue meanwhile (asyncio stops accepting for a second each time), and are
served once descriptors free up (the header and keep-alive timeouts of service.server.connections
free those of slow and idle clients).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any

from prometheus_client import Counter

log = logging.getLogger("vaeserve.connections")
OUT_OF_RESOURCES = {errno.EMFILE: "EMFILE", errno.ENFILE: "ENFILE", errno.ENOBUFS: "ENOBUFS", errno.ENOMEM: "ENOMEM"}
REPEAT_S = 60.0


class AcceptErrors:
    """An event loop exception handler: accepts that failed for lack of descriptors or memory count in
    vaeserve_accept_errors_total and log one warning per repeat_s; anything else goes to asyncio's."""

    def __init__(self, counter: Counter, *, repeat_s: float = REPEAT_S) -> None:
        self.counter = counter
        self.repeat_s = repeat_s
        self.since_warning = 0
        self.warned_at: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES and "socket" in context):
            loop.default_exception_handler(context)
            return
        self.counter.labels(reason=OUT_OF_RESOURCES[exc.errno]).inc()
        self.since_warning += 1
        now = time.monotonic()
        if self.warned_at is not None and now - self.warned_at < self.repeat_s:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning("cannot accept connections: %s (%s; open files limit %d); new connections wait in the "
                    "kernel's queue until descriptors free up: raise `ulimit -n` or add replicas (failed accepts since "
                    "the last warning: %d; said at most once every %.0fs; vaeserve_accept_errors_total counts them)",
                    exc.strerror, OUT_OF_RESOURCES[exc.errno], soft, self.since_warning, self.repeat_s)
        self.warned_at, self.since_warning = now, 0
