"""A sensor table for tests and benchmarks: correlated numbers, a 3-level site, an id, a flag, empty cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SITES = ("A", "B", "C")


def sensor_table(rows: int, *, seed: int = 0, empty_share: float = 0.06) -> dict[str, list[object]]:
    """Columns as lists (None where empty): temperature and pressure depend on the site and each other,
    humidity on temperature, so an out-of-range or inconsistent value is an anomaly a model can see."""
    rng = np.random.default_rng(seed)
    site = rng.choice(len(SITES), size=rows, p=[0.5, 0.3, 0.2])
    temperature = np.array([18.0, 22.0, 26.0])[site] + rng.normal(0, 1.0, rows)
    pressure = 1000 + 2.0 * temperature + rng.normal(0, 1.5, rows)
    humidity = 80 - 1.5 * temperature + rng.normal(0, 2.0, rows)
    valve_open = (temperature > 22) ^ (rng.random(rows) < 0.05)
    columns: dict[str, list[object]] = {
        "id": list(range(100_000, 100_000 + rows)),
        "site": [SITES[s] for s in site],
        "temperature": temperature.round(2).tolist(),
        "pressure": pressure.round(2).tolist(),
        "humidity": humidity.round(2).tolist(),
        "valve_open": valve_open.tolist(),
    }
    for name in ("temperature", "humidity", "site"):  # holes: at least empty_share of these columns' cells
        holes = rng.random(rows) < empty_share
        columns[name] = [None if hole else value for hole, value in zip(holes, columns[name])]
    return columns


def write_csv(path: Path, columns: dict[str, list[object]]) -> Path:
    """Columns as CSV with a header; None as an empty cell, booleans as true/false."""
    names = list(columns)
    lines = [",".join(names)]
    for row in zip(*columns.values()):
        lines.append(",".join("" if v is None else ("true" if v is True else "false" if v is False else str(v))
                              for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path
