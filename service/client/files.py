"""The items of a bulk-scoring job: an .npy array, a CSV of feature rows, or a folder of PNG images."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.contract import csv_header_rows
from service.core.errors import InvalidInput
from service.core.inputs import InputSpec, parse_items


@dataclass(frozen=True)
class Items:
    """(n, ...) numeric items, and for a folder of images the file name of each row."""

    array: np.ndarray
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.array)


def read_items(path: Path, *, spec: InputSpec) -> Items:
    """INPUT as a batch of items; a ValueError names the file and what is wrong with it."""
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
    else:
        raise ValueError(f"{path}: give an .npy array, a .csv of feature rows, or a folder of .png images")
    if array.ndim < 2 or len(array) == 0 or array.dtype.kind not in "fiu":
        raise ValueError(f"{path}: need a numeric array of items (n, ...) with n >= 1, got {array.dtype} "
                         f"{list(array.shape)}")
    return Items(array)


def _read_csv(path: Path) -> np.ndarray:
    """Rows of numbers; a first row that is not all numbers is a header and is skipped."""
    with path.open() as handle:
        header = csv_header_rows(handle.readline())
    try:
        return np.loadtxt(path, delimiter=",", skiprows=header, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: every row after the header must be numbers separated by commas: {exc}") from None


def _read_png_folder(folder: Path, *, spec: InputSpec) -> Items:
    """Each *.png (sorted by name) decoded as the service decodes a PNG item (service/core/inputs.py)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"{folder}: no .png files in the folder")
    rows = np.empty((len(files), spec.features), dtype=np.float32)
    for i, file in enumerate(files):
        try:
            rows[i] = parse_items([base64.b64encode(file.read_bytes()).decode("ascii")], field=file.name, spec=spec,
                                  max_items=1)[0][0]
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
    return Items(rows, names=[file.name for file in files])
