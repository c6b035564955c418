"""The model registry: which model versions exist, which are loaded, and which one a request gets.

It owns every loaded handle (load, warm, swap, evict, drain). Routes ask `use(model, version)` for
a handle and hold it only for their request; a handle that is swapped out or evicted is drained
once its last request is done, so a request never changes version half-way.

Two sources: a repository (`model_repository`: many models and versions, rescanned on SIGHUP and
POST /admin/reload) or one artifacts folder (`artifacts_dir`: a one-model repository, reloaded
in place). Loading runs on its own thread, so a cold model never stalls inference of the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.manifest import ArtifactError
from service.batcher import QueueBudget
from service.discovery import ModelSource, VersionSource, scan_repository, single_folder
from service.drift import DriftMonitor
from service.errors import ModelNotReady, NotFound
from service.metrics import Metrics
from service.pipeline import ModelHandle, build_handle, drain_handle, load_warm_runtime
from service.policy import TrafficPolicy
from service.settings import Settings
from service.shadow import ShadowTraffic

log = logging.getLogger("vaeserve.registry")
LOAD_ERRORS = (ArtifactError, OSError, ValueError, KeyError, TypeError)


@dataclass(eq=False)
class VersionSlot:
    """One version of one model: its files, and its handle while loaded."""

    model: str
    version: str
    source: VersionSource
    budget: QueueBudget  # the model's, shared by its versions
    handle: ModelHandle | None = None
    loading: asyncio.Task[ModelHandle] | None = None
    error: str | None = None
    last_used: float = 0.0

    @property
    def state(self) -> str:
        return "ready" if self.handle else "loading" if self.loading else "failed" if self.error else "unloaded"


@dataclass(eq=False)
class ModelEntry:
    source: ModelSource
    budget: QueueBudget
    slots: dict[str, VersionSlot]  # the available versions (policy.resolve)
    primary: str
    unloaded_by_admin: bool = False
    counters: dict[str, Any] = field(default_factory=dict)  # version -> requests counter child

    @property
    def policy(self) -> TrafficPolicy:
        return self.source.policy


class Lease:
    """One request's hold on a handle: counted in active_requests from acquire to exit, so a version
    is not unloaded under it. (A class: @asynccontextmanager cost 6% of a single-item request.)"""

    __slots__ = ("registry", "model", "version", "handle")

    def __init__(self, registry: ModelRegistry, model: str | None, version: str | None) -> None:
        self.registry, self.model, self.version = registry, model, version

    async def __aenter__(self) -> ModelHandle:
        self.handle = await self.registry.acquire(self.model, self.version)
        self.handle.active_requests += 1
        return self.handle

    async def __aexit__(self, *exc_info: object) -> None:
        self.handle.active_requests -= 1


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=settings.inference_workers, thread_name_prefix="inference")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.drift = DriftMonitor(settings)
        self.shadow = ShadowTraffic(metrics)
        self.models: dict[str, ModelEntry] = {}
        self.default: str | None = None
        self.accepting = True
        self.started = False  # the first scan or load has been attempted
        self.problem: str | None = None  # why the repository itself could not be read
        self._loaded: set[VersionSlot] = set()  # slots holding or loading a handle
        self._rng = random.Random()
        self._rescan_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._load_s = 1.0  # recent load-and-warm time, for Retry-After while loading

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
        return self.default is None or self.handle is not None or not self._listed_for_preload(self.default)

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

    def use(self, model: str | None = None, version: str | None = None) -> Lease:
        """`async with registry.use(...) as handle`: a loaded handle for the whole of one request
        (un-pinned requests follow the canary policy)."""
        return Lease(self, model, version)

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
        return await self._cold(entry, slot)

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

    async def _cold(self, entry: ModelEntry, slot: VersionSlot) -> ModelHandle:
        """A version that is not loaded: load it, and wait for it or answer 503 (lazy_load_wait)."""
        if slot.error and not slot.loading:
            # Retry-After 1: an operator fixes the files and reloads at any moment.
            raise ModelNotReady(f"model {slot.model!r} version {slot.version!r} failed to load: {slot.error}")
        task = self._start_load(slot)
        if not self.settings.lazy_load_wait:
            raise ModelNotReady(f"model {slot.model!r} version {slot.version!r} is loading",
                                retry_after_s=max(1, math.ceil(self._load_s)))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ModelNotReady(f"model {slot.model!r} is still loading", retry_after_s=1) from None
        except LOAD_ERRORS as exc:
            raise ModelNotReady(f"model {slot.model!r} version {slot.version!r} failed to load: {exc}") from None

    # ---- loading and unloading ---------------------------------------------------------------
    def _start_load(self, slot: VersionSlot) -> asyncio.Task[ModelHandle]:
        if slot.loading is None:
            if not self._make_room(keep=slot):
                raise ModelNotReady(f"model {slot.model!r}: {self.settings.max_loaded_models} versions are loading "
                                    "(VAESERVE_MAX_LOADED_MODELS); retry", retry_after_s=max(1, math.ceil(self._load_s)))
            self._loaded.add(slot)
            slot.loading = asyncio.get_running_loop().create_task(self._load(slot))
            slot.loading.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        return slot.loading

    async def _load(self, slot: VersionSlot) -> ModelHandle:
        start = time.monotonic()
        try:
            runtime = await asyncio.get_running_loop().run_in_executor(
                self._loader, load_warm_runtime, slot.source.path, self.settings)
            ref = {"name": slot.model, "version": slot.version}
            handle = build_handle(runtime, name=slot.model, version=slot.version, settings=self.settings,
                                  metrics=self.metrics, executor=self.executor, budget=slot.budget,
                                  drift=self.drift.track(ref, runtime.manifest))
        except LOAD_ERRORS as exc:
            slot.error = str(exc)
            self._loaded.discard(slot)
            self.metrics.model_loads.labels(model=slot.model, outcome="failed").inc()
            log.error("model %s version %s not loaded: %s", slot.model, slot.version, exc)
            raise
        finally:
            slot.loading = None
        elapsed = time.monotonic() - start
        self._load_s = 0.7 * self._load_s + 0.3 * elapsed
        slot.handle, slot.error = handle, None
        self.metrics.model_loads.labels(model=slot.model, outcome="loaded").inc()
        self.metrics.model_load_time.observe(elapsed)
        self.metrics.model_loaded(name=slot.model, version=slot.version, backend=runtime.backend, device=runtime.device)
        self._report_loaded()
        log.info("loaded %s version %s (%s on %s) in %.2fs", slot.model, slot.version, runtime.backend,
                 runtime.device, elapsed)
        return handle

    def _make_room(self, *, keep: VersionSlot) -> bool:
        """Evict least-recently-used versions down to max_loaded_models - 1; False when every other
        slot is still loading. An idle version goes first; a busy one is taken out of routing and
        drained after its last request, never cut off. (One artifacts folder: no limit, a reload
        must not unload the version it replaces before the new one is warm.)"""
        limit = self.settings.max_loaded_models if self.settings.model_repository is not None else 0
        while limit and len(self._loaded - {keep}) >= limit:
            loaded = [s for s in self._loaded if s.handle is not None and s is not keep]
            if not loaded:
                return False
            victim = min(loaded, key=lambda s: (s.handle.active_requests > 0, s.last_used))  # type: ignore[union-attr]
            self._retire(victim, reason="lru")
        return True

    def _retire(self, slot: VersionSlot, *, reason: str) -> None:
        """Take the slot's handle out of routing now; drain and free it in the background."""
        self._loaded.discard(slot)
        handle, slot.handle = slot.handle, None
        if slot.loading is not None:  # a load nobody wants any more: drop it when it lands
            def retire_when_loaded(task: asyncio.Task[ModelHandle]) -> None:
                if not task.cancelled() and task.exception() is None:
                    self._retire(slot, reason=reason)

            slot.loading.add_done_callback(retire_when_loaded)
        if handle is None:
            return
        self._report_loaded()
        self.metrics.model_unloads.labels(reason=reason).inc()
        log.info("unloading %s version %s (%s)", slot.model, slot.version, reason)

        async def drain() -> None:
            await drain_handle(handle, self.settings.shutdown_drain_timeout_s)
            self.metrics.model_unloaded(name=handle.name, version=handle.version, graphs=list(handle.batchers))
            self.drift.forget(handle.ref)

        self._spawn(drain())

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _report_loaded(self) -> None:
        self.metrics.models_loaded.set(sum(1 for s in self._loaded if s.handle is not None))
        self.metrics.ready.set(1 if self.ready else 0)

    # ---- discovery ---------------------------------------------------------------------------
    async def start(self) -> None:
        """The first scan (repository) or load (folder); failures are reported, never raised."""
        try:
            if self.settings.model_repository is not None:
                await self.rescan()
            else:
                await self.load_folder(self.settings.artifacts_dir, initial=True)
        except LOAD_ERRORS as exc:
            self.problem = str(exc)
            log.error("not ready: %s", exc)
        finally:
            self.started = True
            self._report_loaded()

    async def reload(self, artifacts_dir: Path | None = None) -> dict[str, Any]:
        """SIGHUP and POST /admin/reload: rescan the repository, or load the (given) artifacts folder."""
        if self.settings.model_repository is not None:
            if artifacts_dir is not None:
                raise ValueError("artifacts_dir: a repository is rescanned as a whole; drop a new version "
                                 "folder into it instead")
            return await self.rescan()
        handle = await self.load_folder(artifacts_dir or self.settings.artifacts_dir, initial=False)
        return {"model": handle.ref}

    async def load_folder(self, folder: Path, *, initial: bool) -> ModelHandle:
        """One artifacts folder as the only model: load beside the old one, then swap (or raise)."""
        async with self._rescan_lock:
            source = single_folder(Path(folder))
            entry = self._entry_for(source, previous=None)
            if initial:
                self.models, self.default = {source.name: entry}, source.name
            try:
                handle = await self._start_load(entry.slots[source.primary])
            except LOAD_ERRORS as exc:
                raise ArtifactError(str(exc)) from exc
            self._swap({source.name: entry})
            return handle

    async def rescan(self) -> dict[str, Any]:
        """Read the repository again: new versions load (and warm) before they take traffic; versions
        no longer available drain and go; a broken new primary leaves the previous one serving."""
        root = self.settings.model_repository
        assert root is not None, "rescan needs a model repository"
        async with self._rescan_lock:
            sources = await asyncio.get_running_loop().run_in_executor(self._loader, scan_repository, root)
            entries = {name: self._entry_for(source, previous=self.models.get(name)) for name, source in sources.items()}
            wanted = [slot for name, entry in entries.items() if not entry.source.problem and self._preloads(name, entry)
                      for slot in entry.slots.values() if slot.handle is None and not slot.error]
            limit = self.settings.max_loaded_models or len(wanted)
            # More preloads than may stay loaded would only evict each other: the first `limit` load.
            await asyncio.gather(*(self._start_load(slot) for slot in wanted[:limit]), return_exceptions=True)
            for name, entry in entries.items():
                self._keep_previous_primary_if_broken(entry, self.models.get(name))
            self._swap(entries)
            self.problem = None
            return self.describe()

    def _preloads(self, name: str, entry: ModelEntry) -> bool:
        previous = self.models.get(name)
        if previous is not None:  # keep what was warm warm: a model in use gets its new version loaded
            return any(s.handle is not None for s in previous.slots.values())
        return self._listed_for_preload(name)

    def _listed_for_preload(self, name: str) -> bool:
        preload = self.settings.preload.strip()
        return preload == "all" or name in {n.strip() for n in preload.split(",")}

    def _entry_for(self, source: ModelSource, *, previous: ModelEntry | None) -> ModelEntry:
        """An entry for a scanned model, reusing the previous slots whose files did not change."""
        old = previous.slots if previous is not None else {}
        budget = previous.budget if previous is not None else QueueBudget(self.settings.max_queue_items)
        slots: dict[str, VersionSlot] = {}
        for version in source.available:
            kept = old.get(version)
            same = kept is not None and kept.source == source.versions[version] and self.settings.model_repository
            slots[version] = kept if same and kept is not None else VersionSlot(
                source.name, version, source.versions[version], budget)
        return ModelEntry(source, budget, slots, source.primary,
                          unloaded_by_admin=previous.unloaded_by_admin if previous is not None else False)

    @staticmethod
    def _keep_previous_primary_if_broken(entry: ModelEntry, previous: ModelEntry | None) -> None:
        slot = entry.slots.get(entry.primary)
        if previous is None or slot is None or not slot.error:
            return
        old = previous.slots.get(previous.primary)
        if old is not None and old.handle is not None and old.version in entry.source.versions:
            log.error("model %s: new version %s failed (%s); version %s keeps serving", entry.source.name,
                      entry.primary, slot.error, old.version)
            entry.slots[old.version] = old
            entry.primary = old.version

    def _swap(self, entries: dict[str, ModelEntry]) -> None:
        kept = {id(s) for e in entries.values() for s in e.slots.values()}
        gone = [s for e in self.models.values() for s in e.slots.values() if id(s) not in kept]
        self.models = entries
        names = sorted(entries)
        self.default = self.settings.default_model or (names[0] if len(names) == 1 else None)
        for slot in gone:
            self._retire(slot, reason="removed")
        self._report_loaded()

    # ---- admin -------------------------------------------------------------------------------
    async def load_model(self, name: str) -> None:
        """Load every available version of a model (the v2 repository extension's load)."""
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} not found; models: {sorted(self.models)}")
        entry.unloaded_by_admin = False
        for slot in entry.slots.values():
            slot.error = None if slot.handle is None else slot.error  # a failed version is tried again
        await asyncio.gather(*(self._start_load(s) for s in entry.slots.values() if s.handle is None))

    def unload_model(self, name: str) -> None:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} not found; models: {sorted(self.models)}")
        entry.unloaded_by_admin = True
        for slot in entry.slots.values():
            self._retire(slot, reason="admin")

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
            self._start_load(slot)
        self.shadow.mirror(slot.handle, version=slot.version, served=served, x=x, variant=variant,
                           mc_samples=mc_samples, seed=seed, served_scores=scores)

    def describe(self) -> dict[str, Any]:
        """Every model, its versions and their states: GET /models and the v2 repository index."""
        models = []
        for name, entry in sorted(self.models.items()):
            versions = [{"version": v, "state": s.state, "ready": s.handle is not None, "error": s.error,
                         "path": str(s.source.path), "traffic": self._share(entry, v)}
                        for v, s in entry.slots.items()]
            models.append({"name": name, "default": name == self.default, "default_version": entry.primary,
                           "policy": entry.policy.to_dict(), "unloaded": entry.unloaded_by_admin,
                           "problem": entry.source.problem, "versions": versions})
        return {"default_model": self.default, "max_loaded_models": self.settings.max_loaded_models or None,
                "precision": self.settings.precision, "models": models}

    @staticmethod
    def _share(entry: ModelEntry, version: str) -> float:
        canary = entry.policy.canary
        return canary.get(version, 0.0) + (1.0 - sum(canary.values()) if version == entry.primary else 0.0)

    async def shutdown(self) -> bool:
        """Refuse new requests, answer the accepted ones, stop."""
        self.accepting = False
        handles = [s.handle for s in self._loaded if s.handle is not None]
        results = await asyncio.gather(*(drain_handle(h, self.settings.shutdown_drain_timeout_s) for h in handles))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)
        return all(results)
