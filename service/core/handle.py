"""The VAE operations behind the endpoints, on one loaded model version. No HTTP.

A ModelHandle is one loaded version with one batcher per graph, so work from different endpoints
that needs the same graph shares batches. Which handles exist, and which one a request gets, is
the registry's business (service/core/registry/); a request keeps its handle from start to end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.contract import DEFAULT_MC_SAMPLES, NOISE_INPUT, score_output
from model.latent import interpolate
from service.core.batcher import BatchStats, DynamicBatcher, QueueBudget
from service.core.drift import ModelDrift
from service.core.inputs import InputSpec
from service.core.metrics import Metrics
from service.core.noise import standard_normal
from service.core.runtime import ModelRuntime
from service.core.scoring import ScoreCalibration
from service.core.stats import GraphStats
from service.core.work import Work, attribute_batch
from service.settings import Settings


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
    drift: ModelDrift | None = None  # this version's drift windows (service/core/drift.py)
    stats: dict[str, GraphStats] = field(default_factory=dict)  # per graph, Triton's statistics (core/stats.py)
    scoring: ScoreCalibration = field(init=False)  # thresholds, percentiles, p-values, scorer per variant
    ref: dict[str, str] = field(init=False)  # {"name", "version"}: every answer names what computed it

    def __post_init__(self) -> None:
        self.name = self.name or self.runtime.name
        self.version = self.version or self.runtime.version
        self.ref = {"name": self.name, "version": self.version}
        graphs = {g: (self.runtime.inputs(g), self.runtime.outputs(g)) for g in self.runtime.graphs}
        self.scoring = ScoreCalibration(self.calibration, graphs)

    @property
    def latent_dim(self) -> int:
        return self.runtime.config.latent_dim

    async def encode(self, x: np.ndarray, *, sample: bool, seed: int, work: Work | None = None
                     ) -> dict[str, np.ndarray]:
        out = await self.batchers["encoder"].submit({"x": x}, member=work)
        if self.drift is not None:
            self.drift.add_latent(out["mu"])
        if sample:
            eps = standard_normal(seed, out["mu"].shape)
            out = {**out, "z": out["mu"] + np.exp(0.5 * out["log_var"]) * eps}
        return out

    async def decode(self, z: np.ndarray, *, work: Work | None = None) -> np.ndarray:
        out = await self.batchers["decoder"].submit({"z": z.astype(np.float32, copy=False)}, member=work)
        return self.in_range(out["x_mean"])

    def in_range(self, x_mean: np.ndarray) -> np.ndarray:
        """Decoded items within the input's range: a Gaussian image model's mean can leave [0, 1] a
        little, and what /sample and /reconstruct answer must be an item the model accepts back."""
        if self.spec.value_range is None:
            return x_mean
        low, high = self.spec.value_range
        if x_mean.min() >= low and x_mean.max() <= high:  # Bernoulli means always are
            return x_mean
        return np.clip(x_mean, low, high)

    async def reconstruct(self, x: np.ndarray, *, work: Work | None = None) -> np.ndarray:
        """Decoder mean at the posterior mean: deterministic."""
        return await self.decode((await self.encode(x, sample=False, seed=0, work=work))["mu"], work=work)

    async def sample(self, *, n: int, seed: int, temperature: float, work: Work | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        if self.runtime.config.prior == "vampprior":
            return await self._sample_mixture(n=n, seed=seed, temperature=temperature, work=work)
        z = standard_normal(seed, (n, self.latent_dim)) * np.float32(temperature)
        return z, await self.decode(z, work=work)

    async def _sample_mixture(self, *, n: int, seed: int, temperature: float, work: Work | None
                              ) -> tuple[np.ndarray, np.ndarray]:
        """z from the VampPrior mixture: the sampler graph picks component floor(u * N) and adds
        sigma_n * noise; temperature scales the noise (each component's spread), not the means."""
        rng = np.random.default_rng(seed)
        u = rng.random(n, dtype=np.float32)  # (n,) in [0, 1)
        noise = rng.standard_normal((n, self.latent_dim), dtype=np.float32) * np.float32(temperature)
        out = await self.batchers["sampler"].submit({"u": u, "noise": noise}, member=work)
        return out["z"], self.in_range(out["x_mean"])

    async def interpolate(self, z_start: np.ndarray, z_end: np.ndarray, *, steps: int, method: str,
                          work: Work | None = None) -> tuple[np.ndarray, np.ndarray]:
        latents = interpolate(z_start, z_end, steps=steps, method=method)  # type: ignore[arg-type]
        return latents, await self.decode(latents, work=work)

    async def score(self, x: np.ndarray, *, variant: str, mc_samples: int, seed: int, work: Work | None = None
                    ) -> dict[str, np.ndarray]:
        """The outputs of the scorer graph for this variant; the noise comes from a generator seeded
        by the request, so the same request gives the same scores whichever graph computes them."""
        graph = self.scoring.scorer(variant)
        eps = standard_normal(seed, (len(x), mc_samples, self.latent_dim))
        out = await self.batchers[graph].submit({"x": x, NOISE_INPUT: eps}, member=work)
        if self.drift is not None:  # scorers exported before `mu` was an output feed only the score windows
            self.drift.add_scores(variant, out[score_output(variant)], mc_samples=mc_samples)
            if "mu" in out:
                self.drift.add_latent(out["mu"])
        return out


def _graph_runner(runtime: ModelRuntime, graph: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return runtime.run(graph, feeds)
    return run


def _scorer_item_weight(feeds: dict[str, np.ndarray]) -> int:
    """A scorer item with K noise draws costs K/16 items of the default K=16 (at least 1)."""
    return max(1, -(-feeds[NOISE_INPUT].shape[1] // DEFAULT_MC_SAMPLES))


def _batch_observer(metrics: Metrics, ref: dict[str, str], graph: str, graph_stats: GraphStats) -> Any:
    labels = {"model": ref["name"], "version": ref["version"], "graph": graph}
    batch_size = metrics.batch_size.labels(**labels)
    inference = metrics.inference_time.labels(**labels)
    queue_wait = metrics.queue_wait.labels(**labels)

    def observe(stats: BatchStats) -> None:
        batch_size.observe(stats.size)
        inference.observe(stats.inference_s)
        for wait in stats.queue_waits_s:
            queue_wait.observe(wait)
        attribute_batch(graph, stats)  # the requests' queue and compute times, trace spans
        graph_stats.on_batch(stats)  # Triton's statistics extension (GET /v2/models/.../stats)

    return observe


def build_handle(runtime: ModelRuntime, *, name: str, version: str, settings: Settings, metrics: Metrics,
                 executor: Executor, budget: QueueBudget, drift: ModelDrift | None) -> ModelHandle:
    """A handle with one started batcher per graph; every graph of the model shares `budget`."""
    s = settings
    ref = {"name": name, "version": version}
    stats = {graph: GraphStats() for graph in runtime.graphs}
    batchers = {
        graph: DynamicBatcher(
            _graph_runner(runtime, graph),
            max_batch_size=s.max_batch_size, batch_wait_timeout_s=s.batch_wait_timeout_s,
            wait_when_idle=s.batch_wait_when_idle, budget=budget, inline_max_weight=s.inline_batch_max_weight,
            max_queue_items=s.max_queue_items, request_timeout_s=s.request_timeout_s, executor=executor,
            item_weight=_scorer_item_weight if NOISE_INPUT in runtime.inputs(graph) else None,
            on_batch=_batch_observer(metrics, ref, graph, stats[graph]), on_failure=stats[graph].on_failure,
            on_queue_depth=metrics.queue_depth.labels(model=ref["name"], version=ref["version"], graph=graph).set,
        )
        for graph in runtime.graphs
    }
    for batcher in batchers.values():
        batcher.start()
    spec = InputSpec.from_manifest(runtime.manifest)
    return ModelHandle(runtime, batchers, spec, runtime.manifest.get("calibration", {}), name=name, version=version,
                       drift=drift, stats=stats)


async def drain_handle(handle: ModelHandle, timeout_s: float) -> bool:
    """Wait for the handle's last request, finish its queues, stop its batchers."""
    deadline = time.monotonic() + timeout_s
    while handle.active_requests and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    remaining = max(0.0, deadline - time.monotonic())
    results = await asyncio.gather(*(b.drain_and_stop(remaining) for b in handle.batchers.values()))
    return all(results) and handle.active_requests == 0
