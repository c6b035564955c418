"""The work one request asks of the models, and what it cost: filled by the handle and the batcher.

A route hands its request's Work to the handle's operations, which hand it to the batchers; after
each batch the handle attributes the batch to the Work of every request in it (queue wait, compute
time, and, when the request is traced, the batch's span). Nothing here knows HTTP: the request's
record at the edge (service/http/requests.py) is a Work with the request's own fields added.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.batcher import BatchStats


@dataclass(slots=True, eq=False)
class Work:
    """What a request asks (model, items, Monte Carlo samples) and where its time went."""

    model: Mapping[str, str] | None = None
    items: int | None = None
    mc_samples: int | None = None
    compute_s: float = 0.0  # run time of the batches it took part in
    queue_s: dict[str, float] = field(default_factory=dict)  # per graph, the longest wait of its chunks
    span: Any = None  # its OpenTelemetry span when traced, and the tracer that started it
    tracer: Any = None
    wall_offset_ns: int = 0  # the span clock's offset (service/http/tracing.py)
    chunks: list[tuple[str, float, float, float, Any]] = field(default_factory=list)  # traced only
    last_batch: int = 0


def attribute_batch(graph: str, stats: BatchStats) -> None:
    """Attribute a finished batch to the requests in it: queue wait, compute time, trace links."""
    traced = [m for m in stats.members if m is not None and m.span is not None]
    batch_context = traced[0].tracer.batch(graph, stats, traced) if traced else None
    finished = stats.started_at + stats.inference_s
    for member, wait in zip(stats.members, stats.queue_waits_s):
        if member is None:
            continue
        if member.last_batch != id(stats):  # two chunks of one request in one batch ran once
            member.last_batch = id(stats)
            member.compute_s += stats.inference_s
        member.queue_s[graph] = max(member.queue_s.get(graph, 0.0), wait)
        if member.span is not None:
            member.chunks.append((graph, stats.started_at - wait, stats.started_at, finished, batch_context))
