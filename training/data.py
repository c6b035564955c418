"""Datasets: Fashion-MNIST from Debian's IDX files, image folders (training/images.py), and user
feature matrices (.npy / .csv)."""

from __future__ import annotations

import gzip
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.contract import csv_header_rows

FASHION_MNIST_DIR = Path(os.environ.get("VAESERVE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
INSTALL_HINT = "install it with `sudo apt-get install dataset-fashion-mnist` or pass --data-dir"


@dataclass(frozen=True)
class DataSpec:
    """Which data to load; saved in checkpoints so evaluation and export rebuild the same splits."""

    kind: str = "fashion-mnist"  # fashion-mnist | images | table | features
    path: str | None = None  # Fashion-MNIST folder, an image folder, a table (CSV/Parquet), or a .npy/.csv matrix
    test_path: str | None = None  # table and features only: a held-out test file
    classes: tuple[int, ...] = ()  # fashion-mnist only: training classes kept (empty: all)
    class_names: tuple[str, ...] = ()  # images only: the class folders that are normal (empty: all)
    image_size: tuple[int, int] | None = None  # images only: (H, W); None: the most common size
    channels: int | None = None  # images only: 1 or 3; None: 3 if any image is in colour
    categorical: tuple[str, ...] = ()  # table only: columns read as categories whatever their values
    ignore: tuple[str, ...] = ()  # table only: columns dropped (ids, timestamps)
    val_fraction: float = 1 / 12
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "classes": list(self.classes), "class_names": list(self.class_names),
                "image_size": list(self.image_size) if self.image_size else None,
                "categorical": list(self.categorical), "ignore": list(self.ignore)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        size = data.get("image_size")
        return cls(**{**data, "classes": tuple(data.get("classes", ())),
                      "class_names": tuple(data.get("class_names", ())),
                      "categorical": tuple(data.get("categorical", ())), "ignore": tuple(data.get("ignore", ())),
                      "image_size": (int(size[0]), int(size[1])) if size else None})


def load_dataset(spec: DataSpec) -> Dataset:
    """Load what a DataSpec names; the Dataset remembers its spec."""
    if spec.kind == "fashion-mnist":
        data = load_fashion_mnist(Path(spec.path) if spec.path else FASHION_MNIST_DIR,
                                  classes=list(spec.classes), val_fraction=spec.val_fraction, seed=spec.seed)
    elif spec.kind == "images":
        if not spec.path:
            raise DatasetError("an image dataset needs a folder")
        data = load_images(spec)
    elif spec.kind == "table":
        if not spec.path:
            raise DatasetError("a table dataset needs a CSV or Parquet file")
        data = load_table(spec)
    elif spec.kind == "features":
        if not spec.path:
            raise DatasetError("a features dataset needs a path to a .npy or .csv file")
        data = load_tabular(Path(spec.path), test_path=Path(spec.test_path) if spec.test_path else None,
                            val_fraction=spec.val_fraction, seed=spec.seed)
    else:
        raise DatasetError(f"unknown dataset kind {spec.kind!r}: use fashion-mnist, images, table or features")
    data.spec = spec
    return data


class DatasetError(Exception):
    """The dataset is missing or malformed; the message says how to fix it."""


@dataclass
class Dataset:
    """Flattened float32 features in train/validation/test splits, plus what serving must know."""

    name: str
    input_shape: tuple[int, ...]
    train_x: np.ndarray  # (N, F)
    val_x: np.ndarray
    test_x: np.ndarray
    train_y: np.ndarray | None = None
    val_y: np.ndarray | None = None
    test_y: np.ndarray | None = None
    # Standardization for tabular data (None for images, whose pixels are already in [0, 1]).
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    info: dict[str, object] = field(default_factory=dict)
    spec: DataSpec | None = None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: {data.size} values for shape {dims}")
    return data.reshape(dims)


def _idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"Fashion-MNIST file {stem}(.gz) not found in {directory}: {INSTALL_HINT}")


def load_fashion_mnist(
    directory: Path = FASHION_MNIST_DIR,
    *,
    classes: list[int] | None = None,
    val_fraction: float = 1 / 12,
    seed: int = 0,
    test_classes: str = "all",
) -> Dataset:
    """Fashion-MNIST as (N, 784) floats in [0, 1]; `classes` keeps those training classes only.

    The validation split is drawn from the (selected) training set with a fixed seed. The test set
    keeps every class unless test_classes == "selected", so one-class AUROC can use it as is.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"Fashion-MNIST not found at {directory}: {INSTALL_HINT}")
    images = {s: read_idx(_idx_file(directory, f"{s}-images-idx3-ubyte")) for s in ("train", "t10k")}
    labels = {s: read_idx(_idx_file(directory, f"{s}-labels-idx1-ubyte")) for s in ("train", "t10k")}
    train_x = images["train"].reshape(-1, 784).astype(np.float32) / 255.0
    train_y = labels["train"].astype(np.int64)
    test_x = images["t10k"].reshape(-1, 784).astype(np.float32) / 255.0
    test_y = labels["t10k"].astype(np.int64)
    if classes:
        bad = [c for c in classes if not 0 <= c <= 9]
        if bad:
            raise DatasetError(f"Fashion-MNIST classes are 0..9, got {bad}")
        keep = np.isin(train_y, classes)
        train_x, train_y = train_x[keep], train_y[keep]
        if test_classes == "selected":
            keep_test = np.isin(test_y, classes)
            test_x, test_y = test_x[keep_test], test_y[keep_test]
    train_idx, val_idx = split_indices(len(train_x), val_fraction=val_fraction, seed=seed)
    return Dataset(
        name="fashion-mnist",
        input_shape=(1, 28, 28),
        train_x=train_x[train_idx], train_y=train_y[train_idx],
        val_x=train_x[val_idx], val_y=train_y[val_idx],
        test_x=test_x, test_y=test_y,
        info={"source": str(directory), "classes": classes or list(range(10)), "class_names": FASHION_MNIST_CLASSES},
    )


def load_images(spec: DataSpec) -> Dataset:
    """An image folder (training/images.py) as pixels in [0, 1]: the normal images split into train
    and validation; the test split holds the labelled ones (test_y: 1 = anomaly), or, for a flat
    folder, the validation images."""
    from training.images import ImageFolderError, load_image_folder

    root = Path(spec.path or "")
    try:
        images = load_image_folder(root, normal_classes=list(spec.class_names), channels=spec.channels,
                                   size=spec.image_size)
    except ImageFolderError as exc:
        raise DatasetError(str(exc)) from None
    features = int(np.prod(images.train.shape[1:]))
    flat = images.train.reshape(len(images.train), features)  # (N, C*H*W) uint8, CHW order
    train_idx, val_idx = split_indices(len(flat), val_fraction=spec.val_fraction, seed=spec.seed)
    pixels = {"train": _unit(flat[train_idx]), "val": _unit(flat[val_idx])}  # split first: one float copy
    test_x = _unit(images.test.reshape(len(images.test), features))
    test_y = images.test_labels
    has_test = len(test_x) > 0
    if has_test and not (test_y == 0).any():
        # Held-out anomalies alone (class folders; MVTec without test/good): the validation images are
        # the normal side of the test, so AUROC has both.
        test_x = np.concatenate([test_x, pixels["val"]])
        test_y = np.concatenate([test_y, np.zeros(len(val_idx), np.int64)])
    return Dataset(
        name=root.resolve().name or "images", input_shape=tuple(images.train.shape[1:]),
        train_x=pixels["train"], val_x=pixels["val"], test_x=test_x if has_test else pixels["val"],
        test_y=test_y if has_test else None,
        info={"source": str(root), "layout": images.layout, "files": images.classes, "skipped": len(images.skipped),
              "test": "labelled (test_y: 1 = anomaly)" if has_test else "the validation split (no labelled test)"},
    )


def _unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1], converted in place of one copy (100k 64x64x3 images are 4.9 GB)."""
    out = pixels.astype(np.float32)
    out /= 255.0
    return out


def split_indices(n: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation split into (train, validation) indices."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def load_table(spec: DataSpec) -> Dataset:
    """A CSV or Parquet table (training/tables.py): the schema is fitted on this file (scaling on the
    training split), and every split is encoded by it, as the service will encode requests."""
    from model.table_files import TableError, encode_table, read_table
    from training.tables import describe, fit_schema, nan_share

    try:
        raw = read_table(Path(spec.path or ""))
        if raw.rows < 3:
            raise TableError(f"{spec.path}: a table needs at least 3 rows, got {raw.rows}")
        train_idx, val_idx = split_indices(raw.rows, val_fraction=spec.val_fraction, seed=spec.seed)
        schema = fit_schema(raw, train_rows=train_idx, categorical=spec.categorical, ignore=spec.ignore)
        encoded, _ = encode_table(schema, raw)
        test_x = encode_table(schema, read_table(Path(spec.test_path)))[0] if spec.test_path else encoded[val_idx]
    except TableError as exc:
        raise DatasetError(str(exc)) from None
    import logging

    logging.getLogger("vaeserve").info("table %s: %d rows, %d columns (%.1f%% empty cells) as %d features:\n%s",
                                       spec.path, raw.rows, len(raw.columns), 100 * nan_share(raw), schema.width,
                                       describe(schema))
    return Dataset(
        name=Path(spec.path or "table").stem, input_shape=(schema.width,),
        train_x=encoded[train_idx], val_x=encoded[val_idx], test_x=test_x,
        info={"source": str(spec.path), "test_source": str(spec.test_path) if spec.test_path else "validation split",
              "table": schema.to_dict()},
    )


def load_feature_matrix(path: Path) -> np.ndarray:
    """A (N, F) float matrix from .npy or .csv (a non-numeric first row is taken as a header)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"feature file {path} not found")
    if path.suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        with path.open() as handle:
            skip = csv_header_rows(handle.readline())
        matrix = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise DatasetError(f"{path}: feature files must be .npy or .csv")
    if matrix.ndim != 2 or matrix.shape[0] < 3:
        raise DatasetError(f"{path}: expected a 2-D matrix with at least 3 rows, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise DatasetError(f"{path}: contains NaN or infinite values")
    return matrix.astype(np.float32)


def load_tabular(
    path: Path, *, test_path: Path | None = None, val_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """User features for a Gaussian VAE; standardization statistics come from the training split."""
    matrix = load_feature_matrix(path)
    train_idx, val_idx = split_indices(len(matrix), val_fraction=val_fraction, seed=seed)
    train_x, val_x = matrix[train_idx], matrix[val_idx]
    test_x = load_feature_matrix(test_path) if test_path else val_x
    if test_x.shape[1] != train_x.shape[1]:
        raise DatasetError(f"test features have {test_x.shape[1]} columns, training has {train_x.shape[1]}")
    mean = train_x.mean(0)
    std = np.maximum(train_x.std(0), 1e-6).astype(np.float32)  # constant columns stay finite
    return Dataset(
        name=Path(path).stem, input_shape=(train_x.shape[1],),
        train_x=train_x, val_x=val_x, test_x=test_x, mean=mean, std=std,
        info={"source": str(path), "test_source": str(test_path) if test_path else "validation split"},
    )
