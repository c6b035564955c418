"""Per-graph inference statistics in the fields of Triton's statistics extension (no HTTP).

Counted from the batcher's reports: a request is one submitted chunk, an execution one batch.
As in Triton, every request of a batch is charged the batch's whole compute time; queue time is
each request's own. vaeserve does not time input and output copies apart from the graph run, so
compute_input and compute_output count requests with 0 ns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service.core.batcher import BatchStats


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class GraphStats:
    """Counters of one graph of one loaded version; updated on the event loop, read by the routes."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # items
    execution_count: int = 0  # batches
    last_inference_ms: int = 0  # since the epoch
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> its executions' compute

    def on_batch(self, stats: BatchStats) -> None:
        infer_ns = int(stats.inference_s * 1e9)
        for wait in stats.queue_waits_s:
            queue_ns = int(wait * 1e9)
            self.queue.add(queue_ns)
            self.compute_infer.add(infer_ns)
            self.success.add(queue_ns + infer_ns)
        self.inference_count += stats.size
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        self.batches.setdefault(stats.size, Duration()).add(infer_ns)

    def on_failure(self, requests: int) -> None:
        self.fail.add(0, requests)

    def to_triton(self, name: str, version: str) -> dict[str, Any]:
        """One entry of Triton's `model_stats`."""
        requests = self.success.count
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(), "fail": self.fail.to_dict(), "queue": self.queue.to_dict(),
                "compute_input": {"count": requests, "ns": 0}, "compute_infer": self.compute_infer.to_dict(),
                "compute_output": {"count": requests, "ns": 0},
                "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
            "batch_stats": [{"batch_size": size, "compute_input": {"count": d.count, "ns": 0},
                             "compute_infer": d.to_dict(), "compute_output": {"count": d.count, "ns": 0}}
                            for size, d in sorted(self.batches.items())],
            "memory_usage": [],
        }
