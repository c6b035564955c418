"""The model registry: which model versions exist, and which one a request gets.

It owns every loaded handle through its loader (load, warm, evict, drain: loading.py) and stays in
step with the repository or artifacts folder (sync.py). Routes ask `use(model, version)` for a
handle and hold it only for their request; a handle that is swapped out or evicted is drained once
its last request is done, so a request never changes version half-way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import numpy as np

from service.core.drift import DriftMonitor
from service.core.errors import ModelNotReady, NotFound
from service.core.handle import ModelHandle
from service.core.metrics import Metrics
from service.core.registry.entries import LOAD_ERRORS, Lease, ModelEntry, VersionSlot
from service.core.registry.loading import VersionLoader
from service.core.registry.sync import RepositorySync
from service.core.shadow import ShadowTraffic
from service.settings import Settings

log = logging.getLogger("vaeserve.registry")


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.drift = DriftMonitor(settings)
        self.shadow = ShadowTraffic(metrics)
        self.loader = VersionLoader(settings, metrics, self.drift, on_change=self.report_loaded)
        self.sync = RepositorySync(self)
        self.models: dict[str, ModelEntry] = {}
        self.default: str | None = None
        self.accepting = True
        self.started = False  # the first scan or load has been attempted
        self.problem: str | None = None  # why the repository itself could not be read
        self._rng = random.Random()

    # ---- lookups ---------------------------------------------------------------------------
    @property
    def handle(self) -> ModelHandle | None:
        """The default model's primary handle, if loaded."""
        entry = self.models.get(self.default) if self.default else None
        return entry.slots[entry.primary].handle if entry and entry.primary in entry.slots else None

    @property
    def ready(self) -> bool:
        if not (self.accepting and self.started):
            return False
        if self.settings.model_repository is None:
            return self.handle is not None
        if self.problem is not None:
            return False
        return self.default is None or self.handle is not None or not self.listed_for_preload(self.default)

    def not_ready_reason(self) -> str:
        if not self.accepting:
            return "shutting down"
        if self.problem:
            return self.problem
        entry = self.models.get(self.default) if self.default else None
        slot = entry.slots.get(entry.primary) if entry else None
        if slot is not None and slot.error:
            return slot.error
        return "loading and warming up"

    def listed_for_preload(self, name: str) -> bool:
        preload = self.settings.preload.strip()
        return preload == "all" or name in {n.strip() for n in preload.split(",")}

    def use(self, model: str | None = None, version: str | None = None) -> Lease:
        """`async with registry.use(...) as handle`: a loaded handle for the whole of one request
        (un-pinned requests follow the canary policy)."""
        return Lease(self.acquire, model, version)

    async def acquire(self, model: str | None, version: str | None) -> ModelHandle:
        entry = self._entry(model)
        if version is None:
            version = entry.policy.route(entry.primary, self._rng) if entry.policy.canary else entry.primary
        slot = entry.slots.get(version)
        if slot is None:
            raise NotFound(f"model {entry.source.name!r} has no version {version!r}; versions: {list(entry.slots)}")
        slot.last_used = time.monotonic()
        counter = entry.counters.get(version)
        if counter is None:
            counter = entry.counters[version] = self.metrics.model_requests.labels(model=slot.model, version=version)
        counter.inc()
        if slot.handle is not None:
            return slot.handle
        return await self._cold(slot)

    def default_version(self, model: str | None) -> str:
        """The version un-pinned requests to `model` get when no canary draws them (404 if unknown)."""
        return self._entry(model).primary

    def versions(self, model: str | None) -> list[str]:
        return list(self._entry(model).slots)

    def loaded(self, model: str | None, version: str | None) -> ModelHandle | None:
        """The handle of a version if it is loaded now (never starts a load); 404 if unknown."""
        entry = self._entry(model)
        slot = entry.slots.get(version or entry.primary)
        if slot is None:
            raise NotFound(f"model {entry.source.name!r} has no version {version!r}; versions: {list(entry.slots)}")
        return slot.handle

    def _entry(self, model: str | None) -> ModelEntry:
        if not self.accepting:
            raise ModelNotReady("the service is shutting down")
        name = model if model is not None else self.default
        entry = self.models.get(name) if name is not None else None
        if entry is None:
            if not self.started:
                raise ModelNotReady("the model repository is being read")
            if name is None:
                raise NotFound(f"no default model: set VAESERVE_DEFAULT_MODEL or call /models/{{name}}/...; "
                               f"models: {sorted(self.models)}")
            raise NotFound(f"model {name!r} not found; models: {sorted(self.models)}")
        if entry.source.problem:
            raise ModelNotReady(f"model {entry.source.name!r} cannot serve: {entry.source.problem}", retry_after_s=10)
        if entry.unloaded_by_admin:
            raise ModelNotReady(f"model {entry.source.name!r} was unloaded; "
                                f"POST /v2/repository/models/{entry.source.name}/load loads it", retry_after_s=10)
        return entry

    async def _cold(self, slot: VersionSlot) -> ModelHandle:
        """A version that is not loaded: load it, and wait for it or answer 503 (lazy_load_wait)."""
        if slot.error and not slot.loading:
            # Retry-After 1: an operator fixes the files and reloads at any moment.
            raise ModelNotReady(f"model {slot.model!r} version {slot.version!r} failed to load: {slot.error}")
        task = self.loader.start(slot)
        if not self.settings.lazy_load_wait:
            raise ModelNotReady(f"model {slot.model!r} version {slot.version!r} is loading",
                                retry_after_s=self.loader.retry_after_s())
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ModelNotReady(f"model {slot.model!r} is still loading", retry_after_s=1) from None
        except LOAD_ERRORS as exc:
            raise ModelNotReady(f"model {slot.model!r} version {slot.version!r} failed to load: {exc}") from None

    def report_loaded(self) -> None:
        self.metrics.models_loaded.set(sum(1 for s in self.loader.loaded if s.handle is not None))
        self.metrics.ready.set(1 if self.ready else 0)

    # ---- the source --------------------------------------------------------------------------
    async def start(self) -> None:
        """The first scan (repository) or load (folder); failures are reported, never raised."""
        await self.sync.start()

    async def reload(self, artifacts_dir: Path | None = None) -> dict[str, str] | None:
        """SIGHUP and POST /admin/reload: rescan the repository (None), or load the (given) artifacts
        folder (the new version's {"name", "version"})."""
        if self.settings.model_repository is not None:
            if artifacts_dir is not None:
                raise ValueError("artifacts_dir: a repository is rescanned as a whole; drop a new version "
                                 "folder into it instead")
            await self.sync.rescan()
            return None
        handle = await self.sync.load_folder(artifacts_dir or self.settings.artifacts_dir, initial=False)
        return handle.ref

    # ---- admin -------------------------------------------------------------------------------
    async def load_model(self, name: str) -> None:
        """Load every available version of a model (the v2 repository extension's load)."""
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} not found; models: {sorted(self.models)}")
        entry.unloaded_by_admin = False
        for slot in entry.slots.values():
            slot.error = None if slot.handle is None else slot.error  # a failed version is tried again
        await asyncio.gather(*(self.loader.start(s) for s in entry.slots.values() if s.handle is None))

    def unload_model(self, name: str) -> None:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} not found; models: {sorted(self.models)}")
        entry.unloaded_by_admin = True
        for slot in entry.slots.values():
            self.loader.retire(slot, reason="admin")

    def mirror_scores(self, served: ModelHandle, *, x: np.ndarray, variant: str, mc_samples: int, seed: int,
                      scores: np.ndarray) -> None:
        """Per the model's shadow policy, also score this request on the shadow version (metrics only);
        a cold shadow version starts loading and this request is not mirrored."""
        entry = self.models.get(served.name)
        if entry is None or entry.policy.shadow is None or entry.policy.shadow.version == served.version:
            return
        version = entry.policy.shadows(self._rng)
        slot = entry.slots.get(version) if version else None
        if slot is None:
            return
        if slot.handle is None and not slot.error and not entry.unloaded_by_admin:
            try:
                self.loader.start(slot)
            except ModelNotReady:  # no room for a shadow now: the scored request is not the shadow's to fail
                pass
        self.shadow.mirror(slot.handle, version=slot.version, served=served, x=x, variant=variant,
                           mc_samples=mc_samples, seed=seed, served_scores=scores)

    async def shutdown(self) -> bool:
        """Refuse new requests, answer the accepted ones, stop."""
        self.accepting = False
        return await self.loader.shutdown()



