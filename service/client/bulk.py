"""Bulk anomaly scoring (`vaeserve score`): every item of a file, through a running service or offline
on the exported artifacts, with the same numbers either way.

Items are scored in chunks of `chunk_size`: chunk c (items c*chunk_size ...) is one /anomaly-score
request with seed `seed + c`, so item i gets row i % chunk_size of the noise
standard_normal(seed + c, (len(chunk), K, latent_dim)), exactly as the service draws it for that
request (service/core/noise.py). Offline runs the same chunks through the same exported scorer graph
with the same noise, so for the same INPUT, --seed and --chunk-size both give the same scores, up
to float32 rounding in the graph's matrix products (the service batches chunks with other
requests, which changes the kernels' blocking, not the math).
"""

from __future__ import annotations

import asyncio
import csv
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.contract import DEFAULT_MC_SAMPLES, DEFAULT_SCORE_VARIANT, MAX_SEED, score_output
from service.client.files import Items
from service.core.errors import InvalidInput
from service.core.inputs import InputSpec, parse_items
from service.core.noise import standard_normal
from service.core.scoring import ScoreCalibration

COLUMNS = ("score", "reconstruction_nll", "kl", "percentile", "p_value", "threshold", "is_anomaly")


@dataclass(frozen=True)
class ScoreOptions:
    score: str = DEFAULT_SCORE_VARIANT
    mc_samples: int = DEFAULT_MC_SAMPLES
    seed: int = 0
    target_fpr: float | None = None
    contamination: float | None = None
    chunk_size: int = 256


@dataclass
class BulkScores:
    """One column per field of /anomaly-score's results, one row per item."""

    columns: dict[str, np.ndarray]
    model: dict[str, str]

    @classmethod
    def empty(cls, n: int, model: dict[str, str]) -> BulkScores:
        columns = {name: np.zeros(n, dtype=bool if name == "is_anomaly" else np.float64) for name in COLUMNS}
        return cls(columns, model)

    def put(self, part: slice, values: dict[str, np.ndarray]) -> None:
        for name in COLUMNS:
            self.columns[name][part] = values[name]


def located(message: str, start: int) -> str:
    """A service message about `inputs[i]` of one chunk, about item start + i of INPUT instead."""
    return re.sub(r"\binputs\[(\d+)\]", lambda m: f"INPUT item {start + int(m.group(1))}", message)


def chunks(n: int, options: ScoreOptions) -> Iterator[tuple[slice, int]]:
    """(items, seed) per chunk: the seeds that make offline and online agree."""
    if options.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {options.chunk_size}")
    last_seed = options.seed + (n - 1) // options.chunk_size
    if options.seed < 0 or last_seed > MAX_SEED:
        raise ValueError(f"--seed: chunk seeds run from seed to seed + {(n - 1) // options.chunk_size}; keep them "
                         f"within 0..{MAX_SEED}")
    for c, start in enumerate(range(0, n, options.chunk_size)):
        yield slice(start, min(n, start + options.chunk_size)), options.seed + c


class OfflineScorer:
    """The exported scorer graph on ONNX Runtime, with the service's noise, threshold and percentiles."""

    def __init__(self, artifacts_dir: Path, *, threads: int = 0) -> None:
        from service.core.runtime import load_runtime  # onnxruntime: only offline

        self.runtime = load_runtime(artifacts_dir, backend="onnxruntime", device="cpu", intra_op_threads=threads)
        self.spec = InputSpec.from_manifest(self.runtime.manifest)
        graphs = {g: (self.runtime.inputs(g), self.runtime.outputs(g)) for g in self.runtime.graphs}
        self.scoring = ScoreCalibration(self.runtime.manifest.get("calibration", {}), graphs)
        self.model = {"name": self.runtime.name, "version": self.runtime.version}

    def graph(self, variant: str) -> str:
        """The smallest scorer graph that computes the variant, as the service picks it."""
        try:
            return self.scoring.scorer(variant)
        except InvalidInput:
            raise ValueError(f"--score: the model's graphs and calibration do not cover variant {variant!r}") from None

    def threshold(self, options: ScoreOptions) -> float:
        """The service's threshold: the default quantile, or 1 - rate on the calibration grid."""
        return self.scoring.threshold(options.score, target_fpr=options.target_fpr,
                                      contamination=options.contamination)[0]

    def score(self, x: np.ndarray, *, seed: int, options: ScoreOptions, graph: str, threshold: float
              ) -> dict[str, np.ndarray]:
        x, _ = parse_items(np.asarray(x), field="inputs", spec=self.spec, max_items=len(x))  # the service's checks
        eps = standard_normal(seed, (len(x), options.mc_samples, self.runtime.config.latent_dim))
        out = self.runtime.run(graph, {"x": x, "eps": eps})
        scores = out[score_output(options.score)]
        p_values = self.scoring.p_values(options.score, scores)  # None: no calibration scores (NaN, as online)
        return {"score": scores, "reconstruction_nll": out["reconstruction_nll"], "kl": out["kl"],
                "percentile": self.scoring.percentiles(options.score, scores),
                "p_value": np.full(len(x), np.nan) if p_values is None else p_values,
                "threshold": np.full(len(x), threshold), "is_anomaly": scores > threshold}


def progress_bar(total: int) -> Any:
    """tqdm on a terminal; nothing in a log file or a pipe (and nothing if tqdm is not installed)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="item", unit_scale=True, desc="scoring", leave=False)


def score_offline(items: Items, scorer: OfflineScorer, options: ScoreOptions) -> BulkScores:
    graph, threshold = scorer.graph(options.score), scorer.threshold(options)
    result = BulkScores.empty(len(items), scorer.model)
    bar = progress_bar(len(items))
    for part, seed in chunks(len(items), options):
        try:
            values = scorer.score(items.array[part], seed=seed, options=options, graph=graph, threshold=threshold)
        except InvalidInput as exc:
            raise ValueError(located(exc.message, part.start)) from None
        result.put(part, values)
        if bar is not None:
            bar.update(part.stop - part.start)
    if bar is not None:
        bar.close()
    return result


async def score_online(items: Items, client: Any, options: ScoreOptions, *, concurrency: int,
                       model: str | None = None, version: str | None = None) -> BulkScores:
    """Chunks as /anomaly-score requests, `concurrency` at a time (the client retries 429s)."""
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    result = BulkScores.empty(len(items), {})
    gate = asyncio.Semaphore(concurrency)
    bar = progress_bar(len(items))

    from service.client.types import InvalidInputError, PayloadTooLargeError

    async def one(part: slice, seed: int) -> None:
        async with gate:
            try:
                answer = await client.anomaly_score(
                    np.ascontiguousarray(items.array[part]), mc_samples=options.mc_samples, seed=seed,
                    score=options.score, target_fpr=options.target_fpr, contamination=options.contamination,
                    model=model, version=version)
            except InvalidInputError as exc:
                raise ValueError(located(exc.error, part.start)) from None
            except PayloadTooLargeError as exc:
                raise ValueError(f"{exc.error}: give a smaller --chunk-size") from None
        result.put(part, {name: getattr(answer, name) for name in COLUMNS})
        result.model = {"name": answer.model.name, "version": answer.model.version}
        if bar is not None:
            bar.update(part.stop - part.start)

    tasks = [asyncio.create_task(one(part, seed)) for part, seed in chunks(len(items), options)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one chunk failed for good: stop the others instead of finishing them
            task.cancel()
        if bar is not None:
            bar.close()
    return result


def write_csv(path: Path, scores: BulkScores, items: Items) -> None:
    """One row per item: its index in INPUT (and file name for a folder), then the result columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["index", *(["file"] if items.names else []), *COLUMNS]
    columns = [scores.columns[name].tolist() for name in COLUMNS]  # Python floats: shortest exact repr
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for i, row in enumerate(zip(*columns)):
            writer.writerow([i, *([items.names[i]] if items.names else []), *row])


def summary(scores: BulkScores, *, seconds: float, out: Path, mode: str, options: ScoreOptions) -> dict[str, Any]:
    n, flagged = len(scores.columns["score"]), int(scores.columns["is_anomaly"].sum())
    return {"items": n, "flagged": flagged, "flagged_share": round(flagged / max(n, 1), 6),
            "seconds": round(seconds, 3), "items_per_s": round(n / max(seconds, 1e-9), 1), "mode": mode,
            "model": scores.model, "score": options.score, "mc_samples": options.mc_samples, "seed": options.seed,
            "chunk_size": options.chunk_size, "threshold": float(scores.columns["threshold"][0]) if n else None,
            "out": str(out)}

