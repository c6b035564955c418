"""Image folders as datasets (training/images.py): layouts, inferred shape, bad files, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import DatasetError, DataSpec, load_dataset


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import training.images

    monkeypatch.setattr(training.images, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def write(folder: Path, n: int, *, size: tuple[int, int] = (20, 24), colour: bool = False, fmt: str = "PNG",
          seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shape = (size[0], size[1], 3) if colour else size
        pixels = rng.integers(0, 255, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{seed}-{i}.{'jpg' if fmt == 'JPEG' else 'png'}", format=fmt)


def test_a_flat_folder_infers_the_most_common_size_and_grey(tmp_path: Path) -> None:
    write(tmp_path / "flat", 30, size=(20, 24))
    write(tmp_path / "flat", 5, size=(40, 40), seed=1)
    data = load_dataset(DataSpec(kind="images", path=str(tmp_path / "flat"), val_fraction=0.2))
    assert data.input_shape == (1, 20, 24) and len(data.train_x) + len(data.val_x) == 35
    assert data.train_x.dtype == np.float32 and 0 <= data.train_x.min() and data.train_x.max() <= 1
    assert data.test_y is None and data.info["layout"] == "flat"


def test_one_colour_file_makes_the_model_rgb_and_the_layout_is_channels_first(tmp_path: Path) -> None:
    write(tmp_path / "mixed", 10)
    image = np.zeros((20, 24, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red: channel 0 is all ones, the others all zeros
    Image.fromarray(image).save(tmp_path / "mixed" / "red.png")
    data = load_dataset(DataSpec(kind="images", path=str(tmp_path / "mixed"), val_fraction=0.5))
    assert data.input_shape == (3, 20, 24)
    rows = np.concatenate([data.train_x, data.val_x]).reshape(-1, 3, 20, 24)
    red = rows[(rows[:, 0] == 1).all(axis=(1, 2))]
    assert len(red) == 1 and red[0, 1:].max() == 0


def test_class_folders_train_on_the_named_classes_and_hold_out_the_others(tmp_path: Path) -> None:
    write(tmp_path / "classes" / "ok", 20)
    write(tmp_path / "classes" / "scratch", 6, seed=1)
    spec = DataSpec(kind="images", path=str(tmp_path / "classes"), class_names=("ok",), image_size=(16, 16),
                    channels=3, val_fraction=0.25)
    data = load_dataset(spec)
    assert data.input_shape == (3, 16, 16) and len(data.train_x) + len(data.val_x) == 20
    assert list(data.test_y) == [1] * 6 + [0] * 5, "the held-out anomalies, then the validation images as normal"
    with pytest.raises(DatasetError, match=r"--normal-classes \['good'\] are not among its class folders"):
        load_dataset(DataSpec(kind="images", path=str(tmp_path / "classes"), class_names=("good",)))


def test_the_mvtec_layout_labels_its_defects_and_mixes_formats(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    write(root / "train" / "good", 20)
    write(root / "test" / "good", 4, fmt="JPEG", seed=1)
    write(root / "test" / "crack", 3, seed=2)
    data = load_dataset(DataSpec(kind="images", path=str(root), val_fraction=0.25))
    assert data.info["layout"] == "mvtec" and sorted(data.test_y.tolist()) == [0] * 4 + [1] * 3
    assert len(data.test_x) == 7


def test_unreadable_files_are_skipped_and_named_unless_most_are_bad(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "some", 10)
    (tmp_path / "some" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = load_dataset(DataSpec(kind="images", path=str(tmp_path / "some"), val_fraction=0.2))
    assert len(data.train_x) + len(data.val_x) == 10 and data.info["skipped"] == 1
    assert "broken.png" in caplog.text
    write(tmp_path / "bad", 2)
    for i in range(5):
        (tmp_path / "bad" / f"x{i}.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"5 of 7 files could not be read as images"):
        load_dataset(DataSpec(kind="images", path=str(tmp_path / "bad"), val_fraction=0.2))


def test_a_second_load_comes_from_the_cache_and_a_changed_folder_is_decoded_again(tmp_path: Path,
                                                                                 cache_dir: Path) -> None:
    write(tmp_path / "cached", 8)
    spec = DataSpec(kind="images", path=str(tmp_path / "cached"), val_fraction=0.25)
    first = load_dataset(spec)
    assert len(list(cache_dir.glob("images-*.npz"))) == 1
    again = load_dataset(spec)
    np.testing.assert_array_equal(np.sort(first.train_x, 0), np.sort(again.train_x, 0))
    write(tmp_path / "cached", 2, seed=3)
    assert len(load_dataset(spec).train_x) + len(load_dataset(spec).val_x) == 10
    assert len(list(cache_dir.glob("images-*.npz"))) == 2


def test_an_empty_folder_says_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no images \(.bmp, .jpeg, .jpg, .png, .webp\)"):
        load_dataset(DataSpec(kind="images", path=str(tmp_path / "empty")))
