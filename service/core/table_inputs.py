"""Request items of a table model: records by column name, rows in column order, or a numeric array
(NaN where missing) -> the encoded matrix the graphs take, by the manifest's TableSchema; and back."""

from __future__ import annotations

from typing import Any

import numpy as np

from model.table_schema import TableInputError, TableSchema
from service.core.errors import InvalidInput, PayloadTooLarge
from service.core.inputs import InputSpec, Layout, parse_items


def parse_model_items(value: Any, *, field: str, spec: InputSpec, max_items: int,
                      resize: bool = False) -> tuple[np.ndarray, Layout, list[dict[str, Any]]]:
    """Any model's items -> (the matrix its graphs take, the layout to answer in, a table's unseen
    categories): a table model's records or rows, else parse_items."""
    if spec.table is not None:
        x, unseen = parse_table_items(value, field=field, schema=spec.table, max_items=max_items)
        return x, "records", unseen
    return (*parse_items(value, field=field, spec=spec, max_items=max_items, resize=resize), [])


def parse_table_items(value: Any, *, field: str, schema: TableSchema,
                      max_items: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """-> ((n, width) float32, the unseen categories as {"item", "column", "value"}); every error names
    the item and the column."""
    if isinstance(value, np.ndarray):
        return _parse_array(value, field=field, schema=schema, max_items=max_items)
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field}: must be a non-empty list of records (objects by column name) or rows "
                           f"(lists in column order)")
    if len(value) > max_items:
        raise PayloadTooLarge(f"{field}: {len(value)} items exceed the limit of {max_items} per request")
    try:
        return schema.encode_records(value)
    except TableInputError as exc:
        raise InvalidInput(f"{field}{exc}") from None


def _parse_array(array: np.ndarray, *, field: str, schema: TableSchema,
                 max_items: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Plain numbers (an .npy body, or JSON rows of numbers only): one column per schema column."""
    names = [c.name for c in schema.columns]
    if array.ndim != 2 or array.shape[1] != len(names) or len(array) == 0:
        raise InvalidInput(f"{field}: a numeric array for this table must be (n, {len(names)}), columns in this "
                           f"order: {names}; got shape {list(array.shape)}")
    if len(array) > max_items:
        raise PayloadTooLarge(f"{field}: {len(array)} items exceed the limit of {max_items} per request")
    if array.dtype.kind not in "fiu":
        raise InvalidInput(f"{field}: the array must be numeric, got dtype {array.dtype}")
    categorical = [c.name for c in schema.categorical]
    values: dict[str, Any] = {}
    for j, column in enumerate(schema.columns):
        column_values = array[:, j].astype(np.float64)
        # A categorical column of numbers (e.g. --categorical zone) still reads from numbers: level "3" from 3.0.
        values[column.name] = column_values.tolist() if column.name in categorical else column_values
    try:
        return schema.encode_columns(values, len(array))
    except TableInputError as exc:
        raise InvalidInput(f"{field}{exc}") from None


def explanations(schema: TableSchema, feature_nll: np.ndarray) -> list[tuple[list[float], list[dict[str, Any]]]]:
    """Per-feature NLL (n, width) -> per item: (per-column NLL in column order, columns by NLL, largest first)."""
    names = [c.name for c in schema.columns]
    out = []
    for per_column in schema.column_nll(np.asarray(feature_nll)).tolist():
        ranked = sorted(zip(names, per_column), key=lambda item: -item[1])
        out.append((per_column, [{"column": name, "nll": nll} for name, nll in ranked]))
    return out
