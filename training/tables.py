"""Tables with a header (CSV or Parquet) -> a fitted TableSchema and encoded features.

Column types are inferred from what the reader finds: numbers are numeric; strings and booleans are
categorical (or any column named in `categorical`). Columns named in `ignore` are dropped. Columns that
cannot be features are refused by name with the fix: identifiers (a distinct value in every row),
timestamps, nested values, empty columns, categories with too many levels.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from model.table_files import RawTable, TableError
from model.table_schema import MISSING_LEVEL, Column, TableSchema, category_text

# A categorical column with more levels than this is almost always an identifier or free text.
MAX_LEVELS = 200
# Below this many rows, "a distinct value in every row" says nothing about being an identifier.
ID_CHECK_MIN_ROWS = 20


def fit_schema(raw: RawTable, *, train_rows: np.ndarray, categorical: tuple[str, ...] = (),
               ignore: tuple[str, ...] = ()) -> TableSchema:
    """Infer each column's role from the whole file and fit scaling on the training rows."""
    for option, names in (("--ignore", ignore), ("--categorical", categorical)):
        unknown = [n for n in names if n not in raw.columns]
        if unknown:
            raise TableError(f"{option} {unknown[0]!r}: {raw.path} has no such column; its columns are "
                             f"{list(raw.columns)}")
    columns = []
    for name, values in raw.columns.items():
        if name in ignore:
            continue
        kind = raw.kinds[name]
        if name in categorical or kind in ("string", "boolean"):
            columns.append(_categorical(raw.path, name, values, kind))
        elif kind in ("numeric", "integer"):
            columns.append(_numeric(raw.path, name, np.asarray(values), kind, train_rows))
        elif kind == "timestamp":
            raise TableError(f"{raw.path}: column {name!r} holds dates or times, which are not features as they are; "
                             f"pass --ignore {name} (or add numeric features derived from it)")
        elif kind == "empty":
            raise TableError(f"{raw.path}: column {name!r} is empty in every row; pass --ignore {name}")
        else:
            raise TableError(f"{raw.path}: column {name!r} holds nested values; pass --ignore {name}")
    if not columns:
        raise TableError(f"{raw.path}: no feature columns left after --ignore")
    return TableSchema(columns=tuple(columns), ignored=tuple(ignore))


def _numeric(path: Path, name: str, values: np.ndarray, kind: str, train_rows: np.ndarray) -> Column:
    present = values[~np.isnan(values)]
    if len(present) == 0:
        raise TableError(f"{path}: column {name!r} is empty in every row; pass --ignore {name}")
    if kind == "integer" and len(values) >= ID_CHECK_MIN_ROWS and len(present) == len(values):
        distinct = len(np.unique(present))
        if distinct == len(values) and present.max() - present.min() < 2 * len(values):
            raise TableError(f"{path}: column {name!r} looks like an identifier (a distinct whole number in every "
                             f"row, nearly consecutive): as a feature, new ids would look anomalous. Pass --ignore "
                             f"{name} (`vaeserve score --id-column {name}` carries it to the output)")
    train = values[train_rows]
    train = train[~np.isnan(train)]
    train = train if len(train) else present
    std = float(train.std())
    return Column(name=name, kind="numeric", nullable=bool(np.isnan(values).any()), mean=float(train.mean()),
                  std=std if std > 1e-6 else 1.0)  # a constant column: any change is one unit per unit


def _categorical(path: Path, name: str, values: Any, kind: str) -> Column:
    texts = [category_text(v) for v in (values.tolist() if isinstance(values, np.ndarray) else values)]
    counts = Counter(t for t in texts if t is not None)
    if not counts:
        raise TableError(f"{path}: column {name!r} is empty in every row; pass --ignore {name}")
    if len(texts) >= ID_CHECK_MIN_ROWS and len(counts) == len(texts):
        raise TableError(f"{path}: column {name!r} looks like an identifier (a distinct value in every row); "
                         f"pass --ignore {name} (`vaeserve score --id-column {name}` carries it to the output)")
    if len(counts) > MAX_LEVELS:
        raise TableError(f"{path}: column {name!r} has {len(counts)} distinct values; a categorical column may have "
                         f"at most {MAX_LEVELS}. Pass --ignore {name}, or bin it into fewer levels")
    levels = [level for level, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    nullable = any(t is None for t in texts)
    if MISSING_LEVEL in counts:
        raise TableError(f"{path}: column {name!r} uses the reserved value {MISSING_LEVEL!r}")
    return Column(name=name, kind="categorical", nullable=nullable, levels=tuple(levels + [MISSING_LEVEL] * nullable),
                  boolean=kind == "boolean")


def describe(schema: TableSchema) -> str:
    """One line per column for the training log: what was inferred, so a wrong guess is seen at once."""
    lines = []
    for c in schema.columns:
        if c.kind == "numeric":
            lines.append(f"  {c.name}: numeric (mean {c.mean:.4g}, sd {c.std:.4g}{', may be missing' if c.nullable else ''})")
        else:
            shown = ", ".join(c.levels[:6]) + (", ..." if len(c.levels) > 6 else "")
            lines.append(f"  {c.name}: categorical, {len(c.levels)} levels ({shown})")
    if schema.ignored:
        lines.append(f"  ignored: {', '.join(schema.ignored)}")
    return "\n".join(lines)


def nan_share(raw: RawTable) -> float:
    """Share of empty cells (for the log)."""
    cells = 0
    empty = 0
    for values in raw.columns.values():
        cells += len(values)
        if isinstance(values, np.ndarray):
            empty += int(np.isnan(values).sum())
        else:
            empty += sum(1 for v in values if v is None or (isinstance(v, float) and math.isnan(v)))
    return empty / max(cells, 1)
