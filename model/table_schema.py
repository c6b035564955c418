"""A table's schema: which columns a model reads, how each becomes numbers, and back (no torch).

Training fits it on the training split (training/tables.py) and writes it into the manifest; the service
encodes requests with the same object, so serving applies exactly what training did.

Encoded layout (the model's features, in this order; VAEConfig.table_blocks names the blocks):
  1. numeric columns that are never missing: standardized values              ("gaussian", n)
  2. numeric columns that may be missing: standardized values (0 when missing),
     then one missing indicator each                                           ("gaussian_masked", 2 m)
  3. per categorical column: a one-hot over its levels, then one level for
     values training never saw                                                 ("categorical", levels + 1)
A missing categorical value is a level of its own (MISSING_LEVEL) when training had missing values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MISSING_LEVEL = "<missing>"
UNSEEN_LEVEL = "<unseen>"


class TableInputError(ValueError):
    """A record does not fit the schema; the message names the item and the column."""


@dataclass(frozen=True)
class Column:
    """One column a model reads: numeric (mean, std of training values) or categorical (levels)."""

    name: str
    kind: str  # "numeric" | "categorical"
    nullable: bool = False  # training saw missing values: a missing value is data, not an error
    mean: float = 0.0
    std: float = 1.0
    levels: tuple[str, ...] = ()  # categorical: training's levels (MISSING_LEVEL among them when nullable)
    boolean: bool = False  # categorical of true/false values: decoded back to booleans, not strings

    def to_dict(self) -> dict[str, Any]:
        base: dict[str, Any] = {"name": self.name, "kind": self.kind, "nullable": self.nullable}
        if self.kind == "numeric":
            return {**base, "mean": self.mean, "std": self.std}
        return {**base, "levels": list(self.levels), **({"boolean": True} if self.boolean else {})}


@dataclass(frozen=True)
class TableSchema:
    """The columns in the order rows list them, plus the columns dropped (ids, timestamps)."""

    columns: tuple[Column, ...]
    ignored: tuple[str, ...] = ()
    by_name: dict[str, Column] = field(init=False, repr=False, compare=False)
    owners: np.ndarray = field(init=False, repr=False, compare=False)  # (width,) each feature's column index

    def __post_init__(self) -> None:  # derived once: read for every request
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})
        index = {c.name: i for i, c in enumerate(self.columns)}
        object.__setattr__(self, "owners", np.array([index[name] for name in self.feature_columns()], dtype=np.intp))

    # -- layout -------------------------------------------------------------------------------------
    @property
    def dense(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "numeric" and not c.nullable]

    @property
    def masked(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "numeric" and c.nullable]

    @property
    def categorical(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "categorical"]

    def blocks(self) -> tuple[tuple[str, int], ...]:
        """The likelihood's blocks of encoded features, in order (VAEConfig.table_blocks)."""
        blocks: list[tuple[str, int]] = []
        if self.dense:
            blocks.append(("gaussian", len(self.dense)))
        if self.masked:
            blocks.append(("gaussian_masked", 2 * len(self.masked)))
        blocks += [("categorical", len(c.levels) + 1) for c in self.categorical]
        return tuple(blocks)

    @property
    def width(self) -> int:
        return sum(width for _, width in self.blocks())

    def feature_columns(self) -> list[str]:
        """The column each encoded feature belongs to (a per-feature NLL sums to per-column NLLs by it)."""
        masked = [c.name for c in self.masked]
        return ([c.name for c in self.dense] + masked + masked
                + [c.name for c in self.categorical for _ in range(len(c.levels) + 1)])

    def column_nll(self, feature_nll: np.ndarray) -> np.ndarray:
        """(n, width) per-feature NLL -> (n, columns) per-column NLL, in self.columns' order."""
        out = np.zeros((len(feature_nll), len(self.columns)), dtype=np.float64)
        np.add.at(out.T, self.owners, np.asarray(feature_nll, dtype=np.float64).T)
        return out

    # -- encoding -----------------------------------------------------------------------------------
    def encode_columns(self, values: Mapping[str, Sequence[Any] | np.ndarray], n: int) -> tuple[np.ndarray, list[dict[str, str]]]:
        """Columns of raw values (numbers or None/NaN; strings for categorical) -> (n, width) float32,
        and the unseen categories found, as {"item", "column", "value"} records."""
        out = np.zeros((n, self.width), dtype=np.float32)
        unseen: list[dict[str, Any]] = []
        offset = 0
        for column in self.dense:
            out[:, offset] = self._numeric(column, values[column.name], n)
            offset += 1
        m = len(self.masked)
        for j, column in enumerate(self.masked):
            numbers = self._numeric(column, values[column.name], n)
            missing = np.isnan(numbers)
            out[:, offset + j] = np.where(missing, 0.0, numbers)
            out[:, offset + m + j] = missing
        offset += 2 * m
        for column in self.categorical:
            lookup = {level: i for i, level in enumerate(column.levels)}
            for i, raw in enumerate(values[column.name]):
                if not isinstance(raw, (str, bool, int, float, np.generic)) and raw is not None:
                    raise TableInputError(f"[{i}].{column.name}: must be a category (a string, number or boolean), "
                                          f"got {type(raw).__name__}")
                level = category_text(raw)
                if level is None:
                    if not column.nullable:
                        raise TableInputError(f"[{i}].{column.name}: a value is required (training had no missing "
                                              f"values in this column)")
                    level = MISSING_LEVEL
                position = lookup.get(level)
                if position is None:
                    position = len(column.levels)  # the unseen level: scored, and reported
                    unseen.append({"item": i, "column": column.name, "value": level})
                out[i, offset + position] = 1.0
            offset += len(column.levels) + 1
        return out, unseen

    def _numeric(self, column: Column, raw: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
        """Raw values -> standardized float64 (NaN where missing); wrong types and required gaps raise."""
        if isinstance(raw, np.ndarray) and raw.dtype.kind in "fiu":
            numbers = raw.astype(np.float64)
        else:
            numbers = np.empty(n, dtype=np.float64)
            for i, value in enumerate(raw):
                numbers[i] = numeric_value(value, item=i, column=column.name)
        missing = np.isnan(numbers)
        if missing.any() and not column.nullable:
            i = int(np.argmax(missing))
            raise TableInputError(f"[{i}].{column.name}: a value is required (training had no missing values "
                                  "in this column)")
        if np.isinf(numbers).any() or (np.abs(numbers[~missing]) > 1e30).any():
            i = int(np.argmax(np.isinf(numbers) | (np.abs(np.nan_to_num(numbers)) > 1e30)))
            raise TableInputError(f"[{i}].{column.name}: must be a finite number within ±1e30")
        return (numbers - column.mean) / column.std

    def encode_records(self, records: Sequence[Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """JSON records (dicts by column name) or positional rows (lists in column order) -> encode_columns."""
        names = [c.name for c in self.columns]
        allowed = set(names) | set(self.ignored)
        values: dict[str, list[Any]] = {name: [] for name in names}
        for i, record in enumerate(records):
            if isinstance(record, Mapping):
                unknown = [k for k in record if k not in allowed]
                if unknown:
                    raise TableInputError(f"[{i}].{unknown[0]}: unknown column; this model reads {names}")
                for name in names:
                    if name not in record and not self.by_name[name].nullable:
                        raise TableInputError(f"[{i}].{name}: missing required column")
                    values[name].append(record.get(name))
            elif isinstance(record, (list, tuple)):
                if len(record) != len(names):
                    raise TableInputError(f"[{i}]: a row has {len(record)} values; this model reads {len(names)} "
                                          f"columns in this order: {names}")
                for name, value in zip(names, record):
                    values[name].append(value)
            else:
                raise TableInputError(f"[{i}]: each item must be a record (an object by column name) or a row "
                                      f"(a list in column order), got {type(record).__name__}")
        return self.encode_columns(values, len(records))

    # -- decoding -----------------------------------------------------------------------------------
    def decode(self, encoded: np.ndarray) -> list[dict[str, Any]]:
        """Decoder means (n, width) -> records: numeric in training units (None where the model expects the
        value missing), categorical as the most likely training level (None for the missing level)."""
        rows = np.asarray(encoded, dtype=np.float64)
        columns: dict[str, list[Any]] = {}
        offset = 0
        for column in self.dense:
            columns[column.name] = (rows[:, offset] * column.std + column.mean).tolist()
            offset += 1
        m = len(self.masked)
        for j, column in enumerate(self.masked):
            value = rows[:, offset + j] * column.std + column.mean
            columns[column.name] = [None if p > 0.5 else float(v) for v, p in zip(value, rows[:, offset + m + j])]
        offset += 2 * m
        for column in self.categorical:
            probs = rows[:, offset:offset + len(column.levels)]
            best = [column.levels[k] for k in probs.argmax(1)]
            columns[column.name] = [None if level == MISSING_LEVEL else level == "true" if column.boolean else level
                                    for level in best]
            offset += len(column.levels) + 1
        return [{c.name: columns[c.name][i] for c in self.columns} for i in range(len(rows))]

    # -- manifest -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns], "ignored": list(self.ignored),
                "missing_level": MISSING_LEVEL, "unseen_level": UNSEEN_LEVEL}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableSchema:
        columns = tuple(
            Column(name=c["name"], kind=c["kind"], nullable=bool(c.get("nullable")), mean=float(c.get("mean", 0.0)),
                   std=float(c.get("std", 1.0)), levels=tuple(c.get("levels", ())), boolean=bool(c.get("boolean")))
            for c in data["columns"])
        return cls(columns=columns, ignored=tuple(data.get("ignored", ())))


def numeric_value(value: Any, *, item: int, column: str) -> float:
    """A JSON value of a numeric column as a float: a number, or None/NaN for missing. Strings are refused
    (a typo in a type is a client bug to name, not a missing value)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TableInputError(f"[{item}].{column}: must be a number (or null where missing), got "
                              f"{type(value).__name__} {str(value)[:40]!r}")
    return float(value)


def category_text(value: Any) -> str | None:
    """A categorical value as its level text: strings as they are, booleans as true/false, integral
    numbers without a decimal point (1.0 and 1 are one level); None/NaN/"" are missing."""
    if value is None or value == "":
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)
