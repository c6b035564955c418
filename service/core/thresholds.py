"""Threshold policies: a recalibrated threshold per (model, version, score variant), kept in the
store as revisions, served with no reload, reversible.

Scoring looks a threshold up in a dict (no I/O on the request path). Each worker re-reads the
active revisions every `refresh_s` off the event loop, and at once after it writes one itself, so a
recalibration answered by one worker is served by every worker within refresh_s. Without an active
revision a version serves its manifest's threshold; reverting the first revision returns to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.core.store import Store, ThresholdRow

if TYPE_CHECKING:
    from service.core.handle import ModelHandle

log = logging.getLogger("vaeserve.thresholds")
REFRESH_S = 1.0


@dataclass(frozen=True)
class Override:
    threshold: float
    quantile: float
    revision: int


class ThresholdPolicies:
    """The active recalibrated thresholds of every model, as this worker last read them."""

    def __init__(self, store: Store, *, refresh_s: float = REFRESH_S) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.active: dict[tuple[str, str, str], Override] = {}

    def get(self, model: str, version: str, variant: str) -> Override | None:
        return self.active.get((model, version, variant)) if self.active else None

    def served(self, handle: ModelHandle, variant: str, *, target_fpr: float | None = None,
               contamination: float | None = None) -> tuple[float, float | None]:
        """(threshold, quantile) a version serves for a variant: the rate a request asks for, else the
        recalibrated threshold, else the manifest's. A dict lookup, never I/O (the scoring path)."""
        override = self.get(handle.name, handle.version, variant)
        if override is not None and target_fpr is None and contamination is None:
            handle.scoring.scorer(variant)  # InvalidInput for a variant the model cannot compute, as without one
            return override.threshold, override.quantile
        return handle.scoring.threshold(variant, target_fpr=target_fpr, contamination=contamination)

    def load(self) -> None:
        """Read the active revisions (blocking: run it off the loop)."""
        self.active = {(r.model, r.version, r.variant): Override(r.threshold, r.quantile, r.revision)
                       for r in self.store.thresholds(active_only=True)}

    async def refresh(self) -> None:
        await asyncio.to_thread(self.load)

    async def keep_fresh(self) -> None:
        """Re-read every refresh_s until cancelled; a failed read is logged and retried."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a locked or missing file must not stop the loop
                log.exception("threshold policies not refreshed; serving the last ones read")
            await asyncio.sleep(self.refresh_s)

    async def write(self, *, model: str, version: str, variant: str, threshold: float, quantile: float,
                    goal: dict[str, Any]) -> ThresholdRow:
        row = ThresholdRow(0, model, version, variant, threshold, quantile, goal, time.time(), True, None)
        written = await asyncio.to_thread(self.store.add_threshold, row)
        await self.refresh()
        return written

    async def revert(self, *, model: str, version: str, variant: str) -> tuple[ThresholdRow, ThresholdRow | None]:
        result = await asyncio.to_thread(self.store.revert_threshold, model, version, variant)
        await self.refresh()
        return result

    async def history(self, model: str) -> list[ThresholdRow]:
        return await asyncio.to_thread(self.store.thresholds, model)
