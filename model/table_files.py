"""Table files (CSV with a header row, or Parquet) read as columns, and encoded by a TableSchema: shared by
training (fitting a schema), `vaeserve score` and the service's jobs (encoding by the manifest's). No torch."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.table_schema import TableInputError, TableSchema

NULL_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]


class TableError(ValueError):
    """The table cannot be read or a column cannot be a feature; the message names the file and column."""


@dataclass
class RawTable:
    """A table's columns as Python/numpy values: numeric columns float64 with NaN, others lists."""

    path: Path
    columns: dict[str, np.ndarray | list[Any]]
    kinds: dict[str, str]  # reader's view: numeric | integer | boolean | string | timestamp | other
    rows: int


def read_table(path: Path) -> RawTable:
    """A CSV (header row) or Parquet file, read with pyarrow."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise TableError(f"table file {path} not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                null_values=NULL_VALUES, strings_can_be_null=True))
    except (pa.ArrowException, OSError) as exc:
        raise TableError(f"{path}: not a readable {'Parquet' if path.suffix != '.csv' else 'CSV'} table: "
                         f"{str(exc).splitlines()[0]}") from None
    columns: dict[str, np.ndarray | list[Any]] = {}
    kinds: dict[str, str] = {}
    for name, chunked in zip(table.column_names, table.columns):
        kind = _kind(chunked.type)
        kinds[name] = kind
        if kind in ("numeric", "integer"):
            columns[name] = chunked.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
        else:
            columns[name] = chunked.to_pylist()
    if len(set(table.column_names)) != len(table.column_names):
        duplicate = next(n for n, c in Counter(table.column_names).items() if c > 1)
        raise TableError(f"{path}: column {duplicate!r} appears twice in the header")
    return RawTable(path, columns, kinds, table.num_rows)


def _kind(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "numeric"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_dictionary(arrow_type):
        return "string"
    if pa.types.is_null(arrow_type):
        return "empty"
    if pa.types.is_temporal(arrow_type):
        return "timestamp"
    return "other"


def encode_table(schema: TableSchema, raw: RawTable, *,
                 also_allowed: tuple[str, ...] = ()) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A whole table through the schema (the service's code path), errors naming the file and column.
    Columns the model ignores (and also_allowed, e.g. an id to carry) may be present; others are refused."""
    missing = [c.name for c in schema.columns if c.name not in raw.columns]
    if missing:
        raise TableError(f"{raw.path}: column {missing[0]!r} is missing; the model reads "
                         f"{[c.name for c in schema.columns]}")
    extra = [n for n in raw.columns if n not in schema.by_name and n not in schema.ignored and n not in also_allowed]
    if extra:
        raise TableError(f"{raw.path}: column {extra[0]!r} is not one the model reads; drop it or train with it")
    try:
        return schema.encode_columns(raw.columns, raw.rows)
    except TableInputError as exc:
        raise TableError(f"{raw.path}: row {str(exc).lstrip('[').replace('].', ', column ', 1)}") from None


def is_table_file(path: Path) -> bool:
    """Parquet always; CSV when its first row is a header (a header-less CSV is a plain feature matrix)."""
    from model.contract import csv_header_rows

    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return True
    if suffix != ".csv" or not Path(path).is_file():
        return False
    with Path(path).open() as handle:
        return csv_header_rows(handle.readline()) > 0


