"""What the service keeps besides its models: the store (feedback, threshold policies, jobs), the
score_id signer, the threshold policies read from the store, and the job runner. One per worker
process; the store under data_dir is shared by all of them (docs/feedback-and-jobs.md)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.core.errors import ModelNotReady
from service.core.jobs import JobBoard, JobRunner
from service.core.registry import ModelRegistry
from service.core.score_ids import ScoreIds
from service.core.store import Store, open_store
from service.core.thresholds import Override, ThresholdPolicies
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.handle import ModelHandle

log = logging.getLogger("vaeserve.bookkeeping")
SECRET_KEY = "score_id_secret"


class Bookkeeping:
    """Opened on first use (a request) or at start-up (the lifespan), whichever comes first, so an
    application object that is built but never started opens no file. A store that cannot be opened
    (a read-only data_dir) leaves the models serving: score_ids are then signed with a key of this
    process only, and feedback and jobs answer 503 naming the problem."""

    def __init__(self, settings: Settings, registry: ModelRegistry, *, quiet_s: Callable[[], float]) -> None:
        self.settings = settings
        self.registry = registry
        self.quiet_s = quiet_s
        self._store: Store | None = None
        self._ids: ScoreIds | None = None
        self._thresholds: ThresholdPolicies | None = None
        self._jobs: JobBoard | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.problem: str | None = None

    @property
    def store(self) -> Store:
        if self.problem is not None:
            raise ModelNotReady(f"feedback and jobs are off: {self.problem}", retry_after_s=60)
        if self._store is None:
            try:
                self._store = open_store(self.settings.data_dir)
            except (OSError, sqlite3.Error) as exc:
                self.problem = (f"the store under data_dir {str(self.settings.data_dir)!r} cannot be opened ({exc}); "
                                "set VAESERVE_DATA_DIR to a writable folder")
                log.error("%s; models keep serving", self.problem)
                raise ModelNotReady(f"feedback and jobs are off: {self.problem}", retry_after_s=60) from None
        return self._store

    @property
    def ids(self) -> ScoreIds:
        if self._ids is None:
            configured = self.settings.score_id_secret
            if configured:
                secret = configured.encode()
            else:
                try:
                    secret = self.store.secret(SECRET_KEY, secrets.token_bytes(32))
                except ModelNotReady:  # no store: ids this process can check, until it restarts
                    secret = secrets.token_bytes(32)
            self._ids = ScoreIds(secret)
        return self._ids

    @property
    def thresholds(self) -> ThresholdPolicies:
        if self._thresholds is None:
            self._thresholds = ThresholdPolicies(self.store)
        return self._thresholds

    def override(self, model: str, version: str, variant: str) -> Override | None:
        """The recalibrated threshold a version serves, if any: a dict lookup, never I/O (the scoring path)."""
        return self._thresholds.get(model, version, variant) if self._thresholds is not None else None

    def served_threshold(self, handle: ModelHandle, variant: str, *, target_fpr: float | None = None,
                         contamination: float | None = None) -> tuple[float, float | None]:
        """ThresholdPolicies.served; the manifest's threshold while no store has been opened."""
        if self._thresholds is None:
            return handle.scoring.threshold(variant, target_fpr=target_fpr, contamination=contamination)
        return self._thresholds.served(handle, variant, target_fpr=target_fpr, contamination=contamination)

    @property
    def jobs(self) -> JobBoard:
        if self._jobs is None:
            runner = JobRunner(settings=self.settings, store=self.store, registry=self.registry,
                               quiet_s=self.quiet_s)
            self._jobs = JobBoard(settings=self.settings, store=self.store, registry=self.registry, runner=runner,
                                  thresholds=self.thresholds)
        return self._jobs

    async def start(self) -> None:
        """Open the store off the loop, read the thresholds, start refreshing them and running jobs."""
        try:
            await asyncio.to_thread(self._open)
        except ModelNotReady:
            return  # logged once by `store`
        self._refresher = asyncio.get_running_loop().create_task(self.thresholds.keep_fresh())
        await self.jobs.runner.start()

    def _open(self) -> None:
        assert self.ids is not None, "the signer exists once the store is open"
        self.thresholds.load()

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._jobs is not None:
            await self._jobs.runner.stop()
        if self._store is not None:
            self._store.close()
            self._store = None
