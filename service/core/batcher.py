"""A generic dynamic batcher: items from many requests run together. Knows nothing of HTTP.

Requests are split into chunks of at most max_batch_size items; a batch takes whole chunks in
arrival order until it is full or batch_wait_timeout_s has passed since its first chunk arrived
(0 means: take what is queued now; a lone request under no load never waits). One batch per batcher runs at a time, off the event loop, so
under load the queue fills while a batch runs and the next batch is larger. A full queue refuses
at once (Overloaded), a chunk whose deadline passed is answered with RequestTimeout, and a chunk
whose caller went away (cancelled future) is dropped before it is computed.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.errors import ModelNotReady, Overloaded, PayloadTooLarge, RequestTimeout

Batch = dict[str, np.ndarray]
# Admit a request only if the queue ahead of it should drain within this share of its timeout: the
# measured rate is an estimate, and a request admitted only to time out helps nobody.
ADMISSION_SHARE_OF_TIMEOUT = 0.5


@dataclass(slots=True)
class _Chunk:
    inputs: Batch
    size: int
    weight: int  # size times the per-item weight: what the chunk costs to run
    future: asyncio.Future[Batch]
    enqueued_at: float
    deadline: float
    member: Any
    # Per-item shapes, computed once: only chunks with equal ones can share a batch.
    item_shapes: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.item_shapes = tuple(v.shape[1:] for v in self.inputs.values())


class QueueBudget:
    """One queue bound shared by several batchers (all graphs and versions of one model), so a hot
    model fills only its own budget and the other models keep being admitted."""

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.items = 0


@dataclass
class BatchStats:
    """What the batcher reports after each executed batch."""

    size: int
    inference_s: float
    queue_waits_s: list[float] = field(default_factory=list)
    started_at: float = 0.0  # time.monotonic() when the batch started
    members: list[Any] = field(default_factory=list)  # per chunk, the `member` its submitter passed


class DynamicBatcher:
    """Batch calls of handler(inputs) -> outputs, where every array's first axis is the item axis."""

    def __init__(
        self,
        handler: Callable[[Batch], Batch],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_queue_items: int,
        request_timeout_s: float = 30.0,
        executor: Executor | None = None,
        item_weight: Callable[[Batch], int] | None = None,
        wait_when_idle: bool = False,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_failure: Callable[[int], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        budget: QueueBudget | None = None,
        inline_max_weight: int = 0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
        if max_queue_items < 1:
            raise ValueError(f"max_queue_items must be >= 1, got {max_queue_items}")
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_queue_items = max_queue_items
        self.budget = budget if budget is not None else QueueBudget(max_queue_items)
        self.request_timeout_s = request_timeout_s
        self.executor = executor
        # Items can cost more than one unit (e.g. K Monte Carlo samples each): batches and the
        # admission estimate count weight, so a batch of heavy items stays small.
        self.item_weight = item_weight
        self.wait_when_idle = wait_when_idle
        # A batch this light (a lone request) runs on the event loop: handing it to a worker thread
        # and back costs more than running it, and nothing else is waiting meanwhile.
        self.inline_max_weight = inline_max_weight
        self.on_batch = on_batch
        self.on_failure = on_failure  # a batch raised: told how many requests it failed
        self.on_queue_depth = on_queue_depth
        self._queue: deque[_Chunk] = deque()
        self.queued_items = 0
        self.queued_weight = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_batch_chunks = 0
        self._weight_per_s = 0.0  # EWMA of the measured service rate (weight units/s), for admission

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            # In an empty context: the loop outlives whichever request (a reload) happened to start it.
            self._task = contextvars.Context().run(asyncio.get_running_loop().create_task, self._loop())

    async def submit(self, inputs: Batch, *, member: Any = None) -> Batch:
        """Queue the items of one request and return its outputs, in order. `member` (the request's
        Work) comes back in BatchStats.members, so on_batch can attribute the batch to its requests."""
        if self._closing or self._task is None:
            raise ModelNotReady("the service is shutting down or not started")
        size = len(next(iter(inputs.values())))
        unit = max(1, self.item_weight(inputs)) if self.item_weight else 1
        self._refuse_if_it_can_never_fit(size, unit)
        if self.budget.items + size > self.budget.max_items:
            raise Overloaded(
                f"queue full ({self.budget.items} items queued, limit {self.budget.max_items}); retry later",
                retry_after_s=self.retry_after_s(size),
            )
        expected_wait_s = self.expected_wait_s(size * unit)
        if expected_wait_s > ADMISSION_SHARE_OF_TIMEOUT * self.request_timeout_s:
            # Admitting it would only produce a timeout later: refuse now, while the client can go elsewhere.
            raise Overloaded(
                f"queue would take {expected_wait_s:.1f}s to reach this request (limit {self.request_timeout_s}s); "
                "retry later", retry_after_s=self.retry_after_s(size * unit))
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        step = max(1, self.max_batch_size // unit)
        if size <= step:  # most requests: one chunk, no slicing, no gather
            chunk = _Chunk(inputs, size, size * unit, loop.create_future(), now, now + self.request_timeout_s, member)
            self._enqueue([chunk], size, unit)
            return await chunk.future
        chunks = []
        for start in range(0, size, step):
            part = {k: v[start:start + step] for k, v in inputs.items()}
            n = len(next(iter(part.values())))
            chunks.append(_Chunk(part, n, n * unit, loop.create_future(), now, now + self.request_timeout_s, member))
        self._enqueue(chunks, size, unit)
        results = await asyncio.gather(*(c.future for c in chunks))
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def _enqueue(self, chunks: list[_Chunk], size: int, unit: int) -> None:
        self._queue.extend(chunks)
        self.queued_items += size
        self.budget.items += size
        self.queued_weight += size * unit
        self._report_depth()
        self._wakeup.set()

    def _refuse_if_it_can_never_fit(self, size: int, unit: int) -> None:
        """413, not 429, for work no retry can get admitted: more items than the whole queue holds, or
        (at the measured service rate) longer to run alone than the admission limit."""
        if size > self.budget.max_items:
            raise PayloadTooLarge(f"{size} items can never fit the queue (max_queue_items {self.budget.max_items}); "
                                  "send fewer per request")
        alone_s = size * unit / self._weight_per_s if self._weight_per_s > 0 else 0.0
        if alone_s > ADMISSION_SHARE_OF_TIMEOUT * self.request_timeout_s:
            raise PayloadTooLarge(
                f"{size} items of weight {unit} would take {alone_s:.1f}s to run alone at the measured rate, more than "
                f"half of request_timeout_s ({self.request_timeout_s}s); send fewer items (or Monte Carlo samples)")

    def expected_wait_s(self, extra_weight: int = 0) -> float:
        """Seconds until the queue (plus extra_weight) would drain at the measured service rate."""
        if self._weight_per_s <= 0:
            return 0.0
        return (self.queued_weight + self._in_flight + extra_weight) / self._weight_per_s

    def retry_after_s(self, extra_weight: int = 0) -> int:
        """Seconds until the queue would have drained at the measured rate (1..60)."""
        return int(min(60, max(1, math.ceil(self.expected_wait_s(extra_weight)))))

    async def drain_and_stop(self, timeout_s: float) -> bool:
        """Refuse new work, finish what was accepted, stop. True if everything finished in time."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        drained = not self._queue and not self._in_flight
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for chunk in self._queue:
            if not chunk.future.done():
                chunk.future.set_exception(ModelNotReady("the service stopped before this item ran"))
        self._queue.clear()
        self.budget.items -= self.queued_items
        self.queued_items = self.queued_weight = 0
        return drained

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_for_fill()
            chunks = self._take_batch()
            if chunks:
                await self._run(chunks)

    async def _wait_for_fill(self) -> None:
        """Wait until a batch is full or batch_wait_timeout_s after its first chunk arrived.

        A lone request after a lone request does not wait: with one client at a time nobody else
        is coming, and waiting would only add latency. Once batches hold several requests, the
        load is concurrent and waiting a little makes larger, cheaper-per-item batches.
        wait_when_idle=True always waits, as Triton's and Ray Serve's batchers do.
        """
        await asyncio.sleep(0)  # let requests that arrived in the same loop turn join
        idle = len(self._queue) == 1 and self._last_batch_chunks <= 1
        if self.batch_wait_timeout_s == 0 or (idle and not self.wait_when_idle):
            return
        flush_at = self._queue[0].enqueued_at + self.batch_wait_timeout_s
        while self.queued_weight < self.max_batch_size:
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[_Chunk]:
        """Pop whole chunks in order while they fit; drop cancelled ones, time out expired ones.

        Only chunks whose per-item shapes match the first one's can share a batch (e.g. the same
        number of Monte Carlo samples); a different one waits for the next batch, keeping order.
        """
        taken: list[_Chunk] = []
        total = 0
        now = time.monotonic()
        while self._queue and (not taken or total + self._queue[0].weight <= self.max_batch_size):
            if taken and self._queue[0].item_shapes != taken[0].item_shapes:
                break
            chunk = self._queue.popleft()
            self.queued_items -= chunk.size
            self.budget.items -= chunk.size
            self.queued_weight -= chunk.weight
            if chunk.future.done():  # the caller went away: do not compute it
                continue
            if now > chunk.deadline:
                chunk.future.set_exception(RequestTimeout(
                    f"request waited {now - chunk.enqueued_at:.1f}s in the queue (limit {self.request_timeout_s}s)"))
                continue
            taken.append(chunk)
            total += chunk.weight
        self._report_depth()
        return taken

    async def _run(self, chunks: list[_Chunk]) -> None:
        """Run one batch off the loop and hand every chunk its slice (or the batch's exception)."""
        start = time.monotonic()
        inputs = chunks[0].inputs if len(chunks) == 1 else {
            k: np.concatenate([c.inputs[k] for c in chunks]) for k in chunks[0].inputs}
        total = sum(c.size for c in chunks)
        self._in_flight = weight = sum(c.weight for c in chunks)
        self._last_batch_chunks = len(chunks)
        try:
            if weight <= self.inline_max_weight:
                outputs = self.handler(inputs)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.handler, inputs)
            for name, value in outputs.items():
                if len(value) != total:
                    raise RuntimeError(f"handler returned {len(value)} rows of {name!r} for {total} items")
        except Exception as exc:  # every chunk of a failed batch gets the exception
            for chunk in chunks:
                if not chunk.future.done():
                    chunk.future.set_exception(exc)
            if self.on_failure is not None:
                self.on_failure(len(chunks))
            return
        finally:
            self._in_flight = 0
        elapsed = time.monotonic() - start
        rate = weight / max(elapsed, 1e-6)
        self._weight_per_s = rate if self._weight_per_s == 0 else 0.8 * self._weight_per_s + 0.2 * rate
        offset = 0
        for chunk in chunks:
            if not chunk.future.done():
                chunk.future.set_result({k: v[offset:offset + chunk.size] for k, v in outputs.items()})
            offset += chunk.size
        if self.on_batch is not None:
            self.on_batch(BatchStats(total, elapsed, [start - c.enqueued_at for c in chunks], start,
                                     [c.member for c in chunks]))

    def _report_depth(self) -> None:
        if self.on_queue_depth is not None:
            self.on_queue_depth(self.queued_items)
