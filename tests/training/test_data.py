"""Data loading: real Fashion-MNIST shapes and splits, binarization, feature files, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import DatasetError, load_fashion_mnist, load_tabular, read_idx
from training.evaluate import binarize_fixed


@pytest.fixture(scope="module")
def fashion():  # type: ignore[no-untyped-def]
    return load_fashion_mnist()


def test_fashion_mnist_has_the_published_split_sizes_and_pixel_range(fashion) -> None:  # type: ignore[no-untyped-def]
    assert fashion.train_x.shape == (55_000, 784) and fashion.val_x.shape == (5_000, 784)
    assert fashion.test_x.shape == (10_000, 784)
    assert fashion.train_x.dtype == np.float32
    assert 0.0 == fashion.train_x.min() and fashion.train_x.max() == 1.0
    assert set(np.unique(fashion.test_y)) == set(range(10))


def test_class_selection_keeps_only_those_training_classes_and_all_test_classes() -> None:
    data = load_fashion_mnist(classes=[0, 9])
    assert set(np.unique(data.train_y)) | set(np.unique(data.val_y)) == {0, 9}
    assert len(data.train_x) + len(data.val_x) == 12_000
    assert len(data.test_x) == 10_000


def test_missing_dataset_error_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="not found"):
        load_fashion_mnist(tmp_path)


def test_truncated_idx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(5))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)


def test_fixed_binarization_is_reproducible_and_unbiased(fashion) -> None:  # type: ignore[no-untyped-def]
    x = fashion.test_x[:500]
    a, b = binarize_fixed(x, seed=0), binarize_fixed(x, seed=0)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 1.0}
    assert abs(a.mean() - x.mean()) < 0.005


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_feature_files_are_standardized_with_training_statistics(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(5.0, 3.0, size=(200, 4)).astype(np.float32)
    path = tmp_path / f"features{suffix}"
    if suffix == ".npy":
        np.save(path, matrix)
    else:
        np.savetxt(path, matrix, delimiter=",", header="a,b,c,d", comments="")
    data = load_tabular(path)
    assert data.input_shape == (4,)
    assert len(data.train_x) + len(data.val_x) == 200
    np.testing.assert_allclose(data.mean, data.train_x.mean(0), rtol=1e-5)
    assert np.all(np.abs(data.mean - 5.0) < 1.0) and np.all(np.abs(data.std - 3.0) < 0.6)


def test_feature_file_with_nan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.array([[1.0, np.nan]] * 5))
    with pytest.raises(DatasetError, match="NaN"):
        load_tabular(path)
