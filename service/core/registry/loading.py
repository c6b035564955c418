"""Loading and unloading model versions: verify, load and warm off the event loop, evict the least
recently used, and drain a version taken out of routing after its last request.

It owns the thread pools: one inference pool shared by every batcher, and one loader thread, so a
cold model never stalls inference of the others. Two limits make room: VAESERVE_MAX_LOADED_MODELS
(versions) and VAESERVE_MAX_LOADED_BYTES (their measured memory, core/memory.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.core.drift import DriftMonitor
from service.core.errors import ModelNotReady
from service.core.handle import ModelHandle, build_handle, drain_handle
from service.core.memory import release_freed_memory, resident_bytes
from service.core.metrics import Metrics
from service.core.registry.entries import LOAD_ERRORS, VersionSlot
from service.core.runtime import ModelRuntime, SessionLayout, load_runtime
from service.core.verified import VerifiedFiles
from service.settings import Settings

log = logging.getLogger("vaeserve.registry")


def session_layout(settings: Settings) -> SessionLayout:
    """A repository holds many small models: no per-session arenas, and (float32) one copy of the weights."""
    many = settings.model_repository is not None
    share = settings.share_weights
    return SessionLayout(arena=not many, share_weights=(many and settings.precision == "float32")
                         if share is None else share)


def load_warm_runtime(artifacts_dir: Path, settings: Settings, verified: VerifiedFiles | None = None
                      ) -> ModelRuntime:
    """Verify, load and warm one version's graphs, and measure what they hold (blocking: run it off
    the event loop)."""
    # With a repository, many sessions run side by side (inference_workers batches at once), and a
    # thread pool per session sized to every core oversubscribes them: ten models served 29% of one
    # model's rate that way, 88% with one thread each (benchmarks/serve_models.py). With one thread a
    # session has no pool at all, so there is none to share.
    threads = settings.intra_op_threads or (1 if settings.model_repository is not None else 0)
    layout = session_layout(settings)
    if settings.backend == "onnxruntime":
        import onnxruntime  # noqa: F401 - its 34 MiB of code and tables are the process's, not the first model's
    release_freed_memory()
    before = resident_bytes()
    runtime = load_runtime(artifacts_dir, backend=settings.backend, device=settings.device,
                           intra_op_threads=threads, precision=settings.precision, layout=layout, verified=verified)
    # An arena keeps what the warm-up allocates, so warm the batch sizes traffic brings; without one
    # the first run of a graph is the only one that costs more (lazy kernel set-up).
    runtime.warm_up(batch_sizes=(1, 8, 64) if layout.arena else (1,))
    release_freed_memory()
    after = resident_bytes()
    runtime.memory_bytes = max(0, after - before) if before is not None and after is not None else None
    return runtime


class VersionLoader:
    """Loads slots into handles and retires them; `loaded` is every slot holding or loading a handle."""

    def __init__(self, settings: Settings, metrics: Metrics, drift: DriftMonitor, *,
                 on_change: Callable[[], None]) -> None:
        self.settings, self.metrics, self.drift = settings, metrics, drift
        self.executor = ThreadPoolExecutor(max_workers=settings.inference_workers, thread_name_prefix="inference")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.loaded: set[VersionSlot] = set()
        self.verified = VerifiedFiles()  # sha256 once per file, not per load
        self.load_s = 1.0  # recent load-and-warm time, for Retry-After while loading
        self._on_change = on_change  # the registry reports loaded models and readiness
        self._background: set[asyncio.Task[Any]] = set()

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.load_s))

    def start(self, slot: VersionSlot, *, replacing: bool = False) -> asyncio.Task[ModelHandle]:
        """The slot's load task, started if it is not running (ModelNotReady when no room can be made).
        replacing: a new version of a model that is serving; it loads beside the version it replaces,
        one over max_loaded_models until the swap retires the old one, so nothing is evicted to make
        room for it (that could be the very version still answering)."""
        if slot.loading is None:
            freeing: list[asyncio.Task[None]] = []  # the versions unloaded to make room, draining
            if not replacing and not self._make_room(keep=slot, freeing=freeing):
                raise ModelNotReady(f"model {slot.model!r}: no room to load it: the loaded versions are busy or "
                                    "loading (VAESERVE_MAX_LOADED_MODELS, VAESERVE_MAX_LOADED_BYTES); retry",
                                    retry_after_s=self.retry_after_s())
            self.loaded.add(slot)
            slot.loading = asyncio.get_running_loop().create_task(self._load(slot, replacing=replacing,
                                                                             after=freeing))
            slot.loading.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        return slot.loading

    async def _load(self, slot: VersionSlot, *, replacing: bool, after: list[asyncio.Task[None]]) -> ModelHandle:
        start = time.monotonic()
        try:
            if after:  # idle versions free their memory first: the budget holds, and the measurement is this load's
                await asyncio.wait(after, timeout=self.settings.shutdown_drain_timeout_s)
            runtime = await asyncio.get_running_loop().run_in_executor(
                self._loader, load_warm_runtime, slot.source.path, self.settings, self.verified)
            ref = {"name": slot.model, "version": slot.version}
            handle = build_handle(runtime, name=slot.model, version=slot.version, settings=self.settings,
                                  metrics=self.metrics, executor=self.executor, budget=slot.budget,
                                  drift=self.drift.track(ref, runtime.manifest))
        except LOAD_ERRORS as exc:
            slot.error = str(exc)
            self.loaded.discard(slot)
            self.metrics.model_loads.labels(model=slot.model, outcome="failed").inc()
            log.error("model %s version %s not loaded: %s", slot.model, slot.version, exc)
            raise
        except BaseException as exc:  # anything else (a runtime error while warming, a cancellation): no
            self.loaded.discard(slot)  # slot may stay counted as loading, or no room could ever be made
            if not isinstance(exc, asyncio.CancelledError):
                slot.error = f"{type(exc).__name__}: {exc}"
                log.exception("model %s version %s not loaded", slot.model, slot.version)
            raise
        finally:
            slot.loading = None
        elapsed = time.monotonic() - start
        self.load_s = 0.7 * self.load_s + 0.3 * elapsed
        slot.handle, slot.error = handle, None
        slot.memory_bytes = runtime.memory_bytes
        self.metrics.model_loads.labels(model=slot.model, outcome="loaded").inc()
        self.metrics.model_load_time.observe(elapsed)
        self.metrics.model_loaded(name=slot.model, version=slot.version, backend=runtime.backend, device=runtime.device,
                                  memory_bytes=runtime.memory_bytes)
        if not replacing:  # it measured more than its estimate: idle others make room
            self._make_room(keep=slot)
        self._on_change()
        log.info("loaded %s version %s (%s on %s) in %.2fs, %s MiB", slot.model, slot.version, runtime.backend,
                 runtime.device, elapsed, "?" if runtime.memory_bytes is None else f"{runtime.memory_bytes / 2**20:.1f}")
        return handle

    def loaded_bytes(self, *, besides: VersionSlot | None = None) -> int:
        """The measured memory of the loaded versions (a loading one counts its estimate)."""
        return sum(self._expected_bytes(s) for s in self.loaded if s is not besides)

    def _expected_bytes(self, slot: VersionSlot) -> int:
        """Its last measured size; before its first load, the mean of the others' (0 if none is known)."""
        if slot.memory_bytes is not None:
            return slot.memory_bytes
        known = [s.memory_bytes for s in self.loaded if s.memory_bytes is not None]
        return sum(known) // len(known) if known else 0

    def _make_room(self, *, keep: VersionSlot, freeing: list[asyncio.Task[None]] | None = None) -> bool:
        """Unload least-recently-used idle versions until `keep` (its expected or measured size) fits both
        limits; False when it does not and every other version is busy or loading. A version with
        requests in flight is never chosen: unloading it would free nothing until its last request
        ends. (One artifacts folder: no limit, a reload must not unload the version it replaces
        before the new one is warm.)"""
        if self.settings.model_repository is None:
            return True
        count, budget = self.settings.max_loaded_models, self.settings.max_loaded_bytes
        while ((count and len(self.loaded - {keep}) >= count)
               or (budget and self.loaded_bytes(besides=keep) + self._expected_bytes(keep) > budget)):
            idle = [s for s in self.loaded if s.handle is not None and s is not keep and not s.handle.active_requests]
            if not idle:
                return False
            drain = self.retire(min(idle, key=lambda s: s.last_used), reason="lru")
            if drain is not None and freeing is not None:
                freeing.append(drain)
        return True

    def retire(self, slot: VersionSlot, *, reason: str) -> asyncio.Task[None] | None:
        """Take the slot's handle out of routing now; drain and free it in the background (that task)."""
        self.loaded.discard(slot)
        handle, slot.handle = slot.handle, None
        if slot.loading is not None:  # a load nobody wants any more: drop it when it lands
            def retire_when_loaded(task: asyncio.Task[ModelHandle]) -> None:
                if not task.cancelled() and task.exception() is None:
                    self.retire(slot, reason=reason)

            slot.loading.add_done_callback(retire_when_loaded)
        if handle is None:
            return None
        self._on_change()
        self.metrics.model_unloads.labels(reason=reason).inc()
        log.info("unloading %s version %s (%s)", slot.model, slot.version, reason)

        async def drain() -> None:
            await drain_handle(handle, self.settings.shutdown_drain_timeout_s)
            self.metrics.model_unloaded(name=handle.name, version=handle.version, graphs=list(handle.batchers))
            self.drift.forget(handle.ref)
            handle.runtime.graphs.clear()  # the sessions and their weights go now, not with the last
            handle.runtime.weights = None  # reference to the handle, so the memory can be given back
            await asyncio.get_running_loop().run_in_executor(self._loader, release_freed_memory)

        task = asyncio.get_running_loop().create_task(drain())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def run_blocking(self, work: Callable[..., Any], *args: Any) -> Any:
        """Blocking file work (a repository scan) on the loader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._loader, work, *args)

    async def shutdown(self) -> bool:
        """Finish every loaded handle's queues, wait for the background drains, stop the pools."""
        handles = [s.handle for s in self.loaded if s.handle is not None]
        results = await asyncio.gather(*(drain_handle(h, self.settings.shutdown_drain_timeout_s) for h in handles))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)
        return all(results)
