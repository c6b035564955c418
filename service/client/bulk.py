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
import sys
from pathlib import Path
from typing import Any

import numpy as np

from service.core.bulk import (  # noqa: F401  (re-exported: the CLI and tests import them from here)
    COLUMNS,
    BulkScores,
    ScoreOptions,
    chunks,
    located,
    result_columns,
    write_csv,
)
from service.core.errors import InvalidInput
from service.core.inputs import InputSpec, parse_items
from service.core.itemfiles import Items
from service.core.noise import standard_normal
from service.core.scoring import ScoreCalibration


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
        return result_columns(self.scoring, options.score, out, threshold)


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
    table_columns = items.columns or []
    gate = asyncio.Semaphore(concurrency)
    bar = progress_bar(len(items))

    from service.client.types import InvalidInputError, PayloadTooLargeError

    async def one(part: slice, seed: int) -> None:
        async with gate:
            try:
                chunk = ([dict(zip(table_columns, row)) for row in items.rows[part]] if items.rows is not None
                         else np.ascontiguousarray(items.array[part]))
                answer = await client.anomaly_score(
                    chunk, mc_samples=options.mc_samples, seed=seed,
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


def summary(scores: BulkScores, *, seconds: float, out: Path, mode: str, options: ScoreOptions) -> dict[str, Any]:
    n, flagged = len(scores.columns["score"]), int(scores.columns["is_anomaly"].sum())
    return {"items": n, "flagged": flagged, "flagged_share": round(flagged / max(n, 1), 6),
            "seconds": round(seconds, 3), "items_per_s": round(n / max(seconds, 1e-9), 1), "mode": mode,
            "model": scores.model, "score": options.score, "mc_samples": options.mc_samples, "seed": options.seed,
            "chunk_size": options.chunk_size, "threshold": float(scores.columns["threshold"][0]) if n else None,
            "out": str(out)}

