"""The VAE operations behind the endpoints, and the lifecycle of the loaded model. No HTTP.

A ModelHandle is one loaded model with one batcher per graph, so work from different endpoints
that needs the same graph shares batches. A request uses one handle from start to end (`use`),
so a hot reload never mixes versions inside a request: the new handle is loaded and warmed beside
the old one, swapped in atomically, and the old one is drained once its last request is done.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.latent import interpolate
from service.batcher import BatchStats, DynamicBatcher
from service.errors import InvalidInput, ModelNotReady
from service.inputs import InputSpec
from service.metrics import Metrics
from service.runtime import ModelRuntime, load_runtime
from service.schemas import DEFAULT_MC_SAMPLES
from service.settings import Settings

log = logging.getLogger("vaeserve.pipeline")


@functools.lru_cache(maxsize=256)
def _standard_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    noise.flags.writeable = False  # shared between requests
    return noise


def standard_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, I) noise from numpy.random.default_rng(seed), memoized for small shapes: seeding a
    generator costs more than a one-item inference, and most requests reuse a few seeds."""
    if math.prod(shape) <= 1 << 16:  # math.prod: np.prod costs 3 us, more than the rest
        return _standard_normal(seed, shape)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@dataclass
class ModelHandle:
    """A runtime, its batchers, and the operations the endpoints call."""

    runtime: ModelRuntime
    batchers: dict[str, DynamicBatcher]
    spec: InputSpec
    calibration: dict[str, Any]
    active_requests: int = 0
    # Calibration grids as arrays, converted once (percentiles are computed on every request).
    _grids: dict[str, np.ndarray] = field(default_factory=dict)
    _levels: np.ndarray = field(default_factory=lambda: np.zeros(0))

    # Per score variant, the smallest scorer graph that computes it (models exported before
    # scorer_core have only scorer, which computes every variant).
    _scorers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._levels = np.asarray(self.calibration.get("quantile_levels", []), dtype=np.float64)
        self._grids = {name: np.asarray(v["quantiles"], dtype=np.float64)
                       for name, v in self.calibration.get("variants", {}).items()}
        scorers = [g for g in self.runtime.graphs if "eps" in self.runtime.inputs(g)]
        for variant in self._grids:
            able = [g for g in scorers if f"{variant}_score" in self.runtime.outputs(g)]
            if able:
                self._scorers[variant] = min(able, key=lambda g: len(self.runtime.outputs(g)))

    @property
    def ref(self) -> dict[str, str]:
        return {"name": self.runtime.name, "version": self.runtime.version}

    @property
    def latent_dim(self) -> int:
        return self.runtime.config.latent_dim

    async def encode(self, x: np.ndarray, *, sample: bool, seed: int) -> dict[str, np.ndarray]:
        out = await self.batchers["encoder"].submit({"x": x})
        if sample:
            eps = standard_normal(seed, out["mu"].shape)
            out = {**out, "z": out["mu"] + np.exp(0.5 * out["log_var"]) * eps}
        return out

    async def decode(self, z: np.ndarray) -> np.ndarray:
        return (await self.batchers["decoder"].submit({"z": z.astype(np.float32, copy=False)}))["x_mean"]

    async def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Decoder mean at the posterior mean: deterministic."""
        return await self.decode((await self.batchers["encoder"].submit({"x": x}))["mu"])

    async def sample(self, *, n: int, seed: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        z = standard_normal(seed, (n, self.latent_dim)) * np.float32(temperature)
        return z, await self.decode(z)

    async def interpolate(self, z_start: np.ndarray, z_end: np.ndarray, *, steps: int, method: str
                          ) -> tuple[np.ndarray, np.ndarray]:
        latents = interpolate(z_start, z_end, steps=steps, method=method)  # type: ignore[arg-type]
        return latents, await self.decode(latents)

    async def score(self, x: np.ndarray, *, variant: str, mc_samples: int, seed: int) -> dict[str, np.ndarray]:
        """The outputs of the scorer graph for this variant; the noise comes from a generator seeded
        by the request, so the same request gives the same scores whichever graph computes them."""
        graph = self._scorers.get(variant)
        if graph is None:
            raise InvalidInput(f"score: the model's graphs do not compute variant {variant!r}")
        eps = standard_normal(seed, (len(x), mc_samples, self.latent_dim))
        return await self.batchers[graph].submit({"x": x, "eps": eps})

    def threshold(self, variant: str, *, target_fpr: float | None, contamination: float | None) -> tuple[float, float]:
        """(threshold, its quantile of the normal-data calibration)."""
        if target_fpr is not None and contamination is not None:
            raise InvalidInput("target_fpr and contamination: give at most one of them")
        variant_cal = self.calibration.get("variants", {}).get(variant)
        if variant_cal is None:
            raise InvalidInput(f"score: the model has no calibration for variant {variant!r}")
        rate = target_fpr if target_fpr is not None else contamination
        if rate is None:
            return float(variant_cal["threshold"]), float(self.calibration["default_threshold_quantile"])
        quantile = 1.0 - rate
        return float(np.interp(quantile, self._levels, self._grids[variant])), quantile

    def percentiles(self, variant: str, scores: np.ndarray) -> np.ndarray:
        """Share of calibration scores below each score, in percent."""
        return np.interp(scores, self._grids[variant], self._levels) * 100.0


def _graph_runner(runtime: ModelRuntime, graph: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return runtime.run(graph, feeds)
    return run


def _scorer_item_weight(feeds: dict[str, np.ndarray]) -> int:
    """A scorer item with K noise draws costs K/16 items of the default K=16 (at least 1)."""
    return max(1, -(-feeds["eps"].shape[1] // DEFAULT_MC_SAMPLES))


def _batch_observer(metrics: Metrics, graph: str) -> Any:
    batch_size = metrics.batch_size.labels(graph=graph)
    inference = metrics.inference_time.labels(graph=graph)
    queue_wait = metrics.queue_wait.labels(graph=graph)

    def observe(stats: BatchStats) -> None:
        batch_size.observe(stats.size)
        inference.observe(stats.inference_s)
        for wait in stats.queue_waits_s:
            queue_wait.observe(wait)

    return observe


class Pipeline:
    """Owns the current model handle: load, use, reload, drain."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=settings.inference_workers, thread_name_prefix="inference")
        self.handle: ModelHandle | None = None
        self.accepting = True
        self._reload_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[bool]] = set()

    @property
    def current(self) -> ModelHandle:
        handle = self.handle
        if handle is None or not self.accepting:
            raise ModelNotReady("the model is not loaded yet or the service is shutting down")
        return handle

    @asynccontextmanager
    async def use(self) -> AsyncIterator[ModelHandle]:
        """The current handle for the whole of one request."""
        handle = self.current
        handle.active_requests += 1
        try:
            yield handle
        finally:
            handle.active_requests -= 1

    async def load(self, artifacts_dir: Path) -> ModelHandle:
        """Verify, load and warm a model off the event loop, swap it in, retire the previous one."""
        async with self._reload_lock:
            runtime = await asyncio.get_running_loop().run_in_executor(self.executor, self._load_runtime, artifacts_dir)
            handle = self._build_handle(runtime)
            for batcher in handle.batchers.values():
                batcher.start()
            previous, self.handle = self.handle, handle
            self.metrics.set_model(name=runtime.name, version=runtime.version, backend=runtime.backend,
                                   device=runtime.device)
            if previous is not None:
                task = asyncio.get_running_loop().create_task(self.drain(previous, self.settings.shutdown_drain_timeout_s))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
            log.info("serving %s %s (%s on %s)", runtime.name, runtime.version, runtime.backend, runtime.device)
            return handle

    def _load_runtime(self, artifacts_dir: Path) -> ModelRuntime:
        runtime = load_runtime(artifacts_dir, backend=self.settings.backend, device=self.settings.device,
                               intra_op_threads=self.settings.intra_op_threads)
        runtime.warm_up()
        return runtime

    def _build_handle(self, runtime: ModelRuntime) -> ModelHandle:
        s = self.settings
        batchers = {
            graph: DynamicBatcher(
                _graph_runner(runtime, graph),
                max_batch_size=s.max_batch_size, batch_wait_timeout_s=s.batch_wait_timeout_s,
                wait_when_idle=s.batch_wait_when_idle,
                max_queue_items=s.max_queue_items, request_timeout_s=s.request_timeout_s, executor=self.executor,
                item_weight=_scorer_item_weight if "eps" in runtime.inputs(graph) else None,
                on_batch=_batch_observer(self.metrics, graph), on_queue_depth=self.metrics.queue_depth.labels(graph=graph).set,
            )
            for graph in runtime.graphs
        }
        value_range = runtime.manifest["input"].get("range")
        spec = InputSpec(shape=tuple(runtime.manifest["input"]["shape"]),
                         value_range=tuple(value_range) if value_range else None, is_image=runtime.config.is_image)
        return ModelHandle(runtime, batchers, spec, runtime.manifest.get("calibration", {}))

    async def drain(self, handle: ModelHandle, timeout_s: float) -> bool:
        """Wait for the handle's last request, finish its queues, stop its batchers."""
        deadline = time.monotonic() + timeout_s
        while handle.active_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        remaining = max(0.0, deadline - time.monotonic())
        results = await asyncio.gather(*(b.drain_and_stop(remaining) for b in handle.batchers.values()))
        return all(results) and handle.active_requests == 0

    async def shutdown(self) -> bool:
        """Refuse new requests, answer the accepted ones, stop."""
        self.accepting = False
        drained = True
        if self.handle is not None:
            drained = await self.drain(self.handle, self.settings.shutdown_drain_timeout_s)
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        return drained
