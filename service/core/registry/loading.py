"""Loading and unloading model versions: verify, load and warm off the event loop, evict the least
recently used, and drain a version taken out of routing after its last request.

It owns the thread pools: one inference pool shared by every batcher, and one loader thread, so a
cold model never stalls inference of the others.
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
from service.core.metrics import Metrics
from service.core.registry.entries import LOAD_ERRORS, VersionSlot
from service.core.runtime import ModelRuntime, load_runtime
from service.settings import Settings

log = logging.getLogger("vaeserve.registry")


def load_warm_runtime(artifacts_dir: Path, settings: Settings) -> ModelRuntime:
    """Verify, load and warm one version's graphs (blocking: run it off the event loop)."""
    # With a repository, many sessions run side by side (inference_workers batches at once), and a
    # thread pool per session sized to every core oversubscribes them: ten models served 29% of one
    # model's rate that way, 88% with one thread each (benchmarks/serve_models.py).
    threads = settings.intra_op_threads or (1 if settings.model_repository is not None else 0)
    runtime = load_runtime(artifacts_dir, backend=settings.backend, device=settings.device,
                           intra_op_threads=threads, precision=settings.precision)
    runtime.warm_up()
    return runtime


class VersionLoader:
    """Loads slots into handles and retires them; `loaded` is every slot holding or loading a handle."""

    def __init__(self, settings: Settings, metrics: Metrics, drift: DriftMonitor, *,
                 on_change: Callable[[], None]) -> None:
        self.settings, self.metrics, self.drift = settings, metrics, drift
        self.executor = ThreadPoolExecutor(max_workers=settings.inference_workers, thread_name_prefix="inference")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.loaded: set[VersionSlot] = set()
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
            if not replacing and not self._make_room(keep=slot):
                raise ModelNotReady(f"model {slot.model!r}: {self.settings.max_loaded_models} versions are loading "
                                    "(VAESERVE_MAX_LOADED_MODELS); retry", retry_after_s=self.retry_after_s())
            self.loaded.add(slot)
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
        self.metrics.model_loads.labels(model=slot.model, outcome="loaded").inc()
        self.metrics.model_load_time.observe(elapsed)
        self.metrics.model_loaded(name=slot.model, version=slot.version, backend=runtime.backend, device=runtime.device)
        self._on_change()
        log.info("loaded %s version %s (%s on %s) in %.2fs", slot.model, slot.version, runtime.backend,
                 runtime.device, elapsed)
        return handle

    def _make_room(self, *, keep: VersionSlot) -> bool:
        """Evict least-recently-used versions down to max_loaded_models - 1; False when every other
        slot is still loading. An idle version goes first; a busy one is taken out of routing and
        drained after its last request, never cut off. (One artifacts folder: no limit, a reload
        must not unload the version it replaces before the new one is warm.)"""
        limit = self.settings.max_loaded_models if self.settings.model_repository is not None else 0
        while limit and len(self.loaded - {keep}) >= limit:
            loaded = [s for s in self.loaded if s.handle is not None and s is not keep]
            if not loaded:
                return False
            victim = min(loaded, key=lambda s: (s.handle.active_requests > 0, s.last_used))  # type: ignore[union-attr]
            self.retire(victim, reason="lru")
        return True

    def retire(self, slot: VersionSlot, *, reason: str) -> None:
        """Take the slot's handle out of routing now; drain and free it in the background."""
        self.loaded.discard(slot)
        handle, slot.handle = slot.handle, None
        if slot.loading is not None:  # a load nobody wants any more: drop it when it lands
            def retire_when_loaded(task: asyncio.Task[ModelHandle]) -> None:
                if not task.cancelled() and task.exception() is None:
                    self.retire(slot, reason=reason)

            slot.loading.add_done_callback(retire_when_loaded)
        if handle is None:
            return
        self._on_change()
        self.metrics.model_unloads.labels(reason=reason).inc()
        log.info("unloading %s version %s (%s)", slot.model, slot.version, reason)

        async def drain() -> None:
            await drain_handle(handle, self.settings.shutdown_drain_timeout_s)
            self.metrics.model_unloaded(name=handle.name, version=handle.version, graphs=list(handle.batchers))
            self.drift.forget(handle.ref)

        task = asyncio.get_running_loop().create_task(drain())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
