"""The VAE operations behind the endpoints, on one loaded model version. No HTTP.

A ModelHandle is one loaded version with one batcher per graph, so work from different endpoints
that needs the same graph shares batches. Which handles exist, and which one a request gets, is
the registry's business (service/registry.py); a request keeps its handle from start to end.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.conformal import ConformalCalibration
from model.latent import interpolate
from service.batcher import BatchStats, DynamicBatcher, QueueBudget
from service.drift import ModelDrift
from service.errors import InvalidInput
from service.inputs import InputSpec
from service.metrics import Metrics
from service.requestlog import observe_batch
from service.runtime import ModelRuntime, load_runtime
from service.schemas import DEFAULT_MC_SAMPLES
from service.settings import Settings


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
    # The repository's name and version for this model (folder names; the manifest's by default).
    name: str = ""
    version: str = ""
    active_requests: int = 0
    # Calibration grids as arrays, converted once (percentiles are computed on every request).
    _grids: dict[str, np.ndarray] = field(default_factory=dict)
    _levels: np.ndarray = field(default_factory=lambda: np.zeros(0))

    # Per score variant, the smallest scorer graph that computes it (models exported before
    # scorer_core have only scorer, which computes every variant).
    _scorers: dict[str, str] = field(default_factory=dict)
    drift: ModelDrift | None = None  # this version's drift windows (service/drift.py)
    conformal: ConformalCalibration = field(init=False)  # p-values (model/conformal.py)
    ref: dict[str, str] = field(init=False)  # {"name", "version"}: every answer names what computed it

    def __post_init__(self) -> None:
        self.name = self.name or self.runtime.name
        self.version = self.version or self.runtime.version
        self.ref = {"name": self.name, "version": self.version}
        self.conformal = ConformalCalibration(self.calibration)
        self._levels = np.asarray(self.calibration.get("quantile_levels", []), dtype=np.float64)
        self._grids = {name: np.asarray(v["quantiles"], dtype=np.float64)
                       for name, v in self.calibration.get("variants", {}).items()}
        scorers = [g for g in self.runtime.graphs if "eps" in self.runtime.inputs(g)]
        for variant in self._grids:
            able = [g for g in scorers if f"{variant}_score" in self.runtime.outputs(g)]
            if able:
                self._scorers[variant] = min(able, key=lambda g: len(self.runtime.outputs(g)))

    @property
    def latent_dim(self) -> int:
        return self.runtime.config.latent_dim

    async def encode(self, x: np.ndarray, *, sample: bool, seed: int) -> dict[str, np.ndarray]:
        out = await self.batchers["encoder"].submit({"x": x})
        if self.drift is not None:
            self.drift.add_latent(out["mu"])
        if sample:
            eps = standard_normal(seed, out["mu"].shape)
            out = {**out, "z": out["mu"] + np.exp(0.5 * out["log_var"]) * eps}
        return out

    async def decode(self, z: np.ndarray) -> np.ndarray:
        return (await self.batchers["decoder"].submit({"z": z.astype(np.float32, copy=False)}))["x_mean"]

    async def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Decoder mean at the posterior mean: deterministic."""
        return await self.decode((await self.encode(x, sample=False, seed=0))["mu"])

    async def sample(self, *, n: int, seed: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        if self.runtime.config.prior == "vampprior":
            return await self._sample_mixture(n=n, seed=seed, temperature=temperature)
        z = standard_normal(seed, (n, self.latent_dim)) * np.float32(temperature)
        return z, await self.decode(z)

    async def _sample_mixture(self, *, n: int, seed: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        """z from the VampPrior mixture: the sampler graph picks component floor(u * N) and adds
        sigma_n * noise; temperature scales the noise (each component's spread), not the means."""
        rng = np.random.default_rng(seed)
        u = rng.random(n, dtype=np.float32)  # (n,) in [0, 1)
        noise = rng.standard_normal((n, self.latent_dim), dtype=np.float32) * np.float32(temperature)
        out = await self.batchers["sampler"].submit({"u": u, "noise": noise})
        return out["z"], out["x_mean"]

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
        out = await self.batchers[graph].submit({"x": x, "eps": eps})
        if self.drift is not None:  # scorers exported before `mu` was an output feed only the score windows
            self.drift.add_scores(variant, out[f"{variant}_score"], mc_samples=mc_samples)
            if "mu" in out:
                self.drift.add_latent(out["mu"])
        return out

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


def _batch_observer(metrics: Metrics, ref: dict[str, str], graph: str) -> Any:
    labels = {"model": ref["name"], "version": ref["version"], "graph": graph}
    batch_size = metrics.batch_size.labels(**labels)
    inference = metrics.inference_time.labels(**labels)
    queue_wait = metrics.queue_wait.labels(**labels)

    def observe(stats: BatchStats) -> None:
        batch_size.observe(stats.size)
        inference.observe(stats.inference_s)
        for wait in stats.queue_waits_s:
            queue_wait.observe(wait)
        observe_batch(graph, stats)  # the requests' queue and compute times, trace spans

    return observe


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


def build_handle(runtime: ModelRuntime, *, name: str, version: str, settings: Settings, metrics: Metrics,
                 executor: Executor, budget: QueueBudget, drift: ModelDrift | None) -> ModelHandle:
    """A handle with one started batcher per graph; every graph of the model shares `budget`."""
    s = settings
    ref = {"name": name, "version": version}
    batchers = {
        graph: DynamicBatcher(
            _graph_runner(runtime, graph),
            max_batch_size=s.max_batch_size, batch_wait_timeout_s=s.batch_wait_timeout_s,
            wait_when_idle=s.batch_wait_when_idle, budget=budget, inline_max_weight=s.inline_batch_max_weight,
            max_queue_items=s.max_queue_items, request_timeout_s=s.request_timeout_s, executor=executor,
            item_weight=_scorer_item_weight if "eps" in runtime.inputs(graph) else None,
            on_batch=_batch_observer(metrics, ref, graph),
            on_queue_depth=metrics.queue_depth.labels(model=ref["name"], version=ref["version"], graph=graph).set,
        )
        for graph in runtime.graphs
    }
    for batcher in batchers.values():
        batcher.start()
    value_range = runtime.manifest["input"].get("range")
    spec = InputSpec(shape=tuple(runtime.manifest["input"]["shape"]),
                     value_range=tuple(value_range) if value_range else None, is_image=runtime.config.is_image)
    return ModelHandle(runtime, batchers, spec, runtime.manifest.get("calibration", {}), name=name, version=version,
                       drift=drift)


async def drain_handle(handle: ModelHandle, timeout_s: float) -> bool:
    """Wait for the handle's last request, finish its queues, stop its batchers."""
    deadline = time.monotonic() + timeout_s
    while handle.active_requests and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    remaining = max(0.0, deadline - time.monotonic())
    results = await asyncio.gather(*(b.drain_and_stop(remaining) for b in handle.batchers.values()))
    return all(results) and handle.active_requests == 0
