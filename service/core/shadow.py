"""Shadow traffic: a share of score requests is also computed by a candidate version, in the
background, and its scores go to metrics only (their distribution and the difference to the served
score), never to the caller. It never delays an answer and is the first work dropped under load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from service.core.handle import ModelHandle
from service.core.metrics import Metrics

log = logging.getLogger("vaeserve.shadow")
MAX_SHADOW_IN_FLIGHT = 4  # mirrored requests computing at once; more are dropped


class ShadowTraffic:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def mirror(self, candidate: ModelHandle | None, *, version: str, served: ModelHandle, x: np.ndarray,
               variant: str, mc_samples: int, seed: int, served_scores: np.ndarray) -> None:
        """Start computing the same request on `candidate` unless the service is busy."""
        outcome = self.metrics.shadow_requests.labels(model=served.name, version=version, outcome="dropped")
        if candidate is None or self.in_flight >= MAX_SHADOW_IN_FLIGHT or _busy(served) or _busy(candidate):
            outcome.inc()
            return
        self.in_flight += 1
        candidate.active_requests += 1  # holds the candidate's handle like a request would
        task = asyncio.get_running_loop().create_task(
            self._run(candidate, served=served, x=x, variant=variant, mc_samples=mc_samples, seed=seed,
                      served_scores=served_scores))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, candidate: ModelHandle, *, served: ModelHandle, x: np.ndarray, variant: str,
                   mc_samples: int, seed: int, served_scores: np.ndarray) -> None:
        labels: dict[str, Any] = {"model": served.name, "version": candidate.version}
        try:
            out = await candidate.score(x, variant=variant, mc_samples=mc_samples, seed=seed)
            scores = out[f"{variant}_score"]
        except Exception as exc:  # a shadow failure is the candidate's problem, never the caller's
            self.metrics.shadow_requests.labels(**labels, outcome="failed").inc()
            log.debug("shadow %s version %s failed: %s", served.name, candidate.version, exc)
            return
        finally:
            self.in_flight -= 1
            candidate.active_requests -= 1
        histogram = self.metrics.shadow_score.labels(**labels)
        difference = self.metrics.shadow_difference.labels(**labels)
        for value, gap in zip(scores.tolist(), np.abs(scores - served_scores).tolist()):
            histogram.observe(value)
            difference.observe(gap)
        self.metrics.shadow_requests.labels(**labels, outcome="computed").inc()


def _busy(handle: ModelHandle) -> bool:
    """Anything waiting in the handle's queues means the service has better things to do."""
    return any(b.queued_items for b in handle.batchers.values())
