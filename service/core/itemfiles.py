"""The items of a bulk-scoring file: an .npy array, a CSV of feature rows, a Parquet table of numeric columns,
or a folder of PNG images; shared by `vaeserve score` and the service's jobs."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.contract import csv_header_rows
from service.core.errors import InvalidInput
from service.core.inputs import InputSpec, parse_items

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # the formats the service decodes (service/core/inputs.py)


@dataclass(frozen=True)
class Items:
    """(n, ...) numeric items, and for a folder of images the file name of each row (for a table, the
    values of its id column). A table's items also keep their raw rows, in the schema's column order, for
    a service that encodes them itself (online scoring sends these)."""

    array: np.ndarray
    names: list[str] | None = None
    names_header: str = "file"
    rows: list[list[Any]] | None = None
    columns: list[str] | None = None  # the rows' column names

    def __len__(self) -> int:
        return len(self.array)


def read_items(path: Path, *, spec: InputSpec, id_column: str | None = None) -> Items:
    """INPUT as a batch of items; a ValueError names the file and what is wrong with it. id_column: a
    table's column carried to the output beside each row's scores (an id the model does not read)."""
    if spec.table is not None:
        return _read_table(path, spec=spec, id_column=id_column)
    if id_column is not None:
        raise ValueError(f"--id-column {id_column}: only a table model's CSV or Parquet input has columns to carry")
    if path.is_dir():
        return _read_png_folder(path, spec=spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: a large file is read chunk by chunk
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy array: {exc}") from None
    elif suffix == ".csv":
        array = _read_csv(path)
    elif suffix == ".parquet":
        array = _read_parquet(path)
    else:
        raise ValueError(f"{path}: give an .npy array, a .csv of feature rows, a .parquet table, or a folder of "
                         ".png images")
    if array.ndim < 2 or len(array) == 0 or array.dtype.kind not in "fiu":
        raise ValueError(f"{path}: need a numeric array of items (n, ...) with n >= 1, got {array.dtype} "
                         f"{list(array.shape)}")
    return Items(array)


def _read_table(path: Path, *, spec: InputSpec, id_column: str | None) -> Items:
    """A CSV (header row) or Parquet table, encoded by the model's schema as the service encodes records."""
    from model.table_files import TableError, encode_table, read_table

    schema = spec.table
    assert schema is not None, "_read_table needs a table model's spec"
    try:
        raw = read_table(path)
        if id_column is not None and id_column not in raw.columns:
            raise TableError(f"{path}: --id-column {id_column!r} is not a column; its columns are {list(raw.columns)}")
        ids = _id_texts(raw.columns[id_column], integer=raw.kinds[id_column] == "integer") if id_column else None
        encoded, _ = encode_table(schema, raw, also_allowed=(id_column,) if id_column else ())
    except TableError as exc:
        raise ValueError(str(exc)) from None
    columns = [_values(raw.columns[c.name]) for c in schema.columns]
    return Items(encoded, names=ids, names_header=id_column or "file", rows=[list(row) for row in zip(*columns)],
                 columns=[c.name for c in schema.columns])


def _id_texts(column: Any, *, integer: bool) -> list[str]:
    """An id column as text: whole numbers without a decimal point, empty cells empty."""
    return ["" if v is None else str(int(v)) if integer else str(v) for v in _values(column)]


def _values(column: Any) -> list[Any]:
    """A column as JSON values: NaN as None, whole floats of an integer column as they were read."""
    if isinstance(column, np.ndarray):
        return [None if v != v else v for v in column.tolist()]
    return list(column)


def _read_csv(path: Path) -> np.ndarray:
    """Rows of numbers; a first row that is not all numbers is a header and is skipped."""
    with path.open() as handle:
        header = csv_header_rows(handle.readline())
    try:
        return np.loadtxt(path, delimiter=",", skiprows=header, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: every row after the header must be numbers separated by commas: {exc}") from None


def _read_parquet(path: Path) -> np.ndarray:
    """Every column a number: one row per item (pyarrow, the `parquet` extra)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid, OSError, ... for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet table: {exc}") from None
    bad = [f"{field.name} ({field.type})" for field in table.schema
           if not (str(field.type).startswith(("int", "uint", "float", "double", "halffloat")))]
    if bad:
        raise ValueError(f"{path}: every column must be numeric; not: {', '.join(bad[:5])}")
    if table.num_columns == 0:
        raise ValueError(f"{path}: the table has no columns")
    return np.column_stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(table.num_columns)]
                           ).astype(np.float32)


def _read_png_folder(folder: Path, *, spec: InputSpec) -> Items:
    """Each PNG or JPEG file (sorted by name) decoded as the service decodes an item, resized to the model's size
    (service/core/inputs.py)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no .png or .jpg files in the folder")
    rows = np.empty((len(files), spec.features), dtype=np.float32)
    for i, file in enumerate(files):
        try:
            rows[i] = parse_items([base64.b64encode(file.read_bytes()).decode("ascii")], field=file.name, spec=spec, resize=True,
                                  max_items=1)[0][0]
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
    return Items(rows, names=[file.name for file in files])
