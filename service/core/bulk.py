"""The bulk-scoring format shared by `vaeserve score` (service/client/bulk.py) and the service's jobs
(service/core/jobs/): the options, the chunks and their seeds, the result columns, and the CSV.

Chunk c (items c*chunk_size ...) is scored with seed `seed + c`, as one /anomaly-score request with
that seed would be, so a file scored offline, online or as a job gives the same numbers.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.contract import DEFAULT_MC_SAMPLES, DEFAULT_SCORE_VARIANT, MAX_SEED, score_output
from service.core.itemfiles import Items
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


def write_csv(path: Path, scores: BulkScores, items: Items) -> None:
    """One row per item: its index in INPUT (and file name for a folder), then the result columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["index", *([items.names_header] if items.names else []), *COLUMNS]
    columns = [scores.columns[name].tolist() for name in COLUMNS]  # Python floats: shortest exact repr
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for i, row in enumerate(zip(*columns)):
            writer.writerow([i, *([items.names[i]] if items.names else []), *row])


def result_columns(scoring: ScoreCalibration, variant: str, out: dict[str, np.ndarray], threshold: float
                   ) -> dict[str, np.ndarray]:
    """The CSV's columns for one chunk from the scorer graph's outputs, as /anomaly-score computes them
    (p_value NaN where the service sends null: a variant without calibration scores)."""
    scores = out[score_output(variant)]
    p_values = scoring.p_values(variant, scores)
    return {"score": scores, "reconstruction_nll": out["reconstruction_nll"], "kl": out["kl"],
            "percentile": scoring.percentiles(variant, scores),
            "p_value": np.full(len(scores), np.nan) if p_values is None else p_values,
            "threshold": np.full(len(scores), threshold), "is_anomaly": scores > threshold}
