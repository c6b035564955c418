"""The VAE operations behind the endpoints: decode inputs -> batched graphs -> results. No HTTP.

A ModelHandle is one loaded model with one batcher per graph, so work from different endpoints
that needs the same graph shares batches. Hot reload builds a new handle, warms it, swaps it in
atomically and drains the old one.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.latent import interpolate
from service.batcher import BatchStats, DynamicBatcher
from service.errors import InvalidInput, ModelNotReady
from service.inputs import InputSpec
from service.metrics import Metrics
from service.runtime import ModelRuntime
from service.settings import Settings

log = logging.getLogger("vaeserve.pipeline")


@dataclass
class ModelHandle:
    """A runtime and its batchers."""

    runtime: ModelRuntime
    batchers: dict[str, DynamicBatcher]
    spec: InputSpec
    calibration: dict[str, Any]

    @property
    def ref(self) -> dict[str, str]:
        return {"name": self.runtime.name, "version": self.runtime.version}


def build_handle(runtime: ModelRuntime, settings: Settings, metrics: Metrics, executor: ThreadPoolExecutor) -> ModelHandle:
    """One batcher per graph, reporting to the metrics; call start_handle on the event loop."""
    batchers = {}
    for graph in runtime.graphs:
        batchers[graph] = DynamicBatcher(
            lambda feeds, g=graph: runtime.run(g, feeds),
            max_batch_size=settings.max_batch_size, batch_wait_timeout_s=settings.batch_wait_timeout_s,
            max_queue_items=settings.max_queue_items, request_timeout_s=settings.request_timeout_s,
            executor=executor, on_batch=_batch_observer(metrics, graph),
            on_queue_depth=metrics.queue_depth.labels(graph=graph).set,
        )
    shape = tuple(runtime.manifest["input"]["shape"])
    value_range = runtime.manifest["input"].get("range")
    spec = InputSpec(shape=shape, value_range=tuple(value_range) if value_range else None,
                     is_image=runtime.config.is_image)
    return ModelHandle(runtime, batchers, spec, runtime.manifest.get("calibration", {}))


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
    """The operations every endpoint calls; holds the current model handle."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=settings.inference_workers, thread_name_prefix="inference")
        self.handle: ModelHandle | None = None
        self.accepting = True

    @property
    def current(self) -> ModelHandle:
        handle = self.handle
        if handle is None or not self.accepting:
            raise ModelNotReady("the model is not loaded yet or the service is shutting down")
        return handle

    async def install(self, handle: ModelHandle) -> ModelHandle | None:
        """Start a warmed handle's batchers and swap it in; returns the previous handle."""
        for batcher in handle.batchers.values():
            batcher.start()
        previous, self.handle = self.handle, handle
        self.metrics.set_model(name=handle.runtime.name, version=handle.runtime.version,
                               backend=handle.runtime.backend, device=handle.runtime.device)
        return previous

    async def drain(self, handle: ModelHandle, timeout_s: float) -> bool:
        """Finish everything a handle accepted, then stop its batchers."""
        results = await asyncio.gather(*(b.drain_and_stop(timeout_s) for b in handle.batchers.values()))
        return all(results)

    async def encode(self, x: np.ndarray, *, sample: bool, seed: int) -> dict[str, np.ndarray]:
        handle = self.current
        out = await handle.batchers["encoder"].submit({"x": x})
        if sample:
            eps = np.random.default_rng(seed).standard_normal(out["mu"].shape, dtype=np.float32)
            out = {**out, "z": out["mu"] + np.exp(0.5 * out["log_var"]) * eps}
        return out

    async def decode(self, z: np.ndarray) -> np.ndarray:
        return (await self.current.batchers["decoder"].submit({"z": z.astype(np.float32, copy=False)}))["x_mean"]

    async def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Decoder mean at the posterior mean: deterministic."""
        mu = (await self.current.batchers["encoder"].submit({"x": x}))["mu"]
        return await self.decode(mu)

    async def sample(self, *, n: int, seed: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        latent_dim = self.current.runtime.config.latent_dim
        z = np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32) * np.float32(temperature)
        return z, await self.decode(z)

    async def interpolate(self, z_start: np.ndarray, z_end: np.ndarray, *, steps: int, method: str
                          ) -> tuple[np.ndarray, np.ndarray]:
        latents = interpolate(z_start, z_end, steps=steps, method=method)  # type: ignore[arg-type]
        return latents, await self.decode(latents)

    async def score(self, x: np.ndarray, *, mc_samples: int, seed: int) -> dict[str, np.ndarray]:
        """The scorer graph's outputs; the noise comes from a generator seeded by the request."""
        handle = self.current
        eps = np.random.default_rng(seed).standard_normal(
            (len(x), mc_samples, handle.runtime.config.latent_dim), dtype=np.float32)
        return await handle.batchers["scorer"].submit({"x": x, "eps": eps})

    def threshold(self, variant: str, *, target_fpr: float | None, contamination: float | None) -> tuple[float, float]:
        """(threshold, its quantile) from the calibration of normal data."""
        if target_fpr is not None and contamination is not None:
            raise InvalidInput("target_fpr and contamination: give at most one of them")
        calibration = self.current.calibration
        variant_cal = calibration.get("variants", {}).get(variant)
        if variant_cal is None:
            raise InvalidInput(f"score: the model has no calibration for variant {variant!r}")
        rate = target_fpr if target_fpr is not None else contamination
        if rate is None:
            return float(variant_cal["threshold"]), float(calibration["default_threshold_quantile"])
        quantile = 1.0 - rate
        return float(np.interp(quantile, calibration["quantile_levels"], variant_cal["quantiles"])), quantile

    def percentiles(self, variant: str, scores: np.ndarray) -> np.ndarray:
        """Share of calibration scores below each score, in percent."""
        calibration = self.current.calibration
        grid = np.asarray(calibration["variants"][variant]["quantiles"])
        levels = np.asarray(calibration["quantile_levels"]) * 100.0
        return np.interp(scores, grid, levels)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
