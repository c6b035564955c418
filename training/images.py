"""Image folders as datasets: any size, grey or colour, in three layouts.

    flat            DIR/*.png|jpg|...                    every image normal
    class folders   DIR/<class>/*.png                    --normal-classes NAME ... are normal, the others
                                                         held out as labelled anomalies for evaluation
    MVTec AD        DIR/train/good/, DIR/test/good/,     train on train/good; test/<defect>/ are labelled
                    DIR/test/<defect>/                   anomalies (vaeserve evaluate reports AUROC)

Every image is resized to one size H x W (bilinear, aspect ratio not kept: the model has one input
shape, and stretching keeps every pixel of the object, where cropping could cut the defect out) and
converted to --channels 1 (grey) or 3 (RGB). Both are inferred when not given: the most common size
among the files, and 3 channels if any file is in colour; the choice is logged. Files are decoded
once into a uint8 array cached beside nothing of the user's (VAESERVE_CACHE_DIR, default
~/.cache/vaeserve), keyed by the files' names, sizes and modification times and the size and
channels asked for. Unreadable files are listed and skipped, unless they are most of the folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("vaeserve.data")
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
NORMAL_FOLDER = "good"  # MVTec AD's name for normal images
MAX_BAD_SHARE = 0.5  # more unreadable files than this share: the folder is not an image dataset
CACHE_DIR = Path(os.environ.get("VAESERVE_CACHE_DIR", Path.home() / ".cache" / "vaeserve"))


class ImageFolderError(ValueError):
    """The folder cannot be read as an image dataset; the message names the folder or files."""


@dataclass(frozen=True)
class ImageSet:
    """Decoded images (N, C, H, W) uint8 per split, with 0/1 anomaly labels for the test split."""

    layout: str
    train: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray  # (N_test,) 1 = anomaly
    classes: dict[str, int]  # files per folder, as found
    skipped: list[str]


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_layout(root: Path, normal_classes: list[str]) -> tuple[str, list[Path], list[tuple[Path, int]]]:
    """(layout, training files, [(test file, label)]) of a folder."""
    if not root.is_dir():
        raise ImageFolderError(f"{root}: not a folder")
    if (root / "train" / NORMAL_FOLDER).is_dir():
        test_root = root / "test"
        tests = [(p, 0 if d.name == NORMAL_FOLDER else 1)
                 for d in (sorted(x for x in test_root.iterdir() if x.is_dir()) if test_root.is_dir() else [])
                 for p in image_files(d)]
        return "mvtec", image_files(root / "train" / NORMAL_FOLDER), tests
    subfolders = sorted(d for d in root.iterdir() if d.is_dir() and image_files(d))
    if subfolders and not image_files(root):
        names = [d.name for d in subfolders]
        unknown = [c for c in normal_classes if c not in names]
        if unknown:
            raise ImageFolderError(f"{root}: --normal-classes {unknown} are not among its class folders {names}")
        normal = set(normal_classes or names)
        train = [p for d in subfolders if d.name in normal for p in image_files(d)]
        tests = [(p, 1) for d in subfolders if d.name not in normal for p in image_files(d)]
        return "classes", train, tests
    files = image_files(root)
    if not files:
        raise ImageFolderError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or its class folders")
    if normal_classes:
        raise ImageFolderError(f"{root}: --normal-classes needs class folders; this folder holds images directly")
    return "flat", files, []


def probe_shape(files: list[Path], channels: int | None, size: tuple[int, int] | None) -> tuple[int, int, int]:
    """(C, H, W): as given, else the most common size and 3 channels if any image is in colour."""
    from PIL import Image

    sizes: Counter[tuple[int, int]] = Counter()
    colour = False
    for path in files[:: max(1, len(files) // 2000)]:  # headers of up to ~2000 files: cheap
        try:
            with Image.open(path, formats=[IMAGE_SUFFIXES[path.suffix.lower()]]) as image:
                sizes[(image.height, image.width)] += 1
                colour |= image.mode not in ("1", "L", "LA", "I", "I;16", "F")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    if not sizes:
        raise ImageFolderError(f"none of the images under {files[0].parent} could be read")
    height, width = size or sizes.most_common(1)[0][0]
    return channels or (3 if colour else 1), height, width


def decode(files: list[Path], shape: tuple[int, int, int], *, what: str) -> tuple[np.ndarray, list[str]]:
    """(N, C, H, W) uint8 of the readable files, and the names of those that were not."""
    from PIL import Image

    channels, height, width = shape
    out = np.empty((len(files), channels, height, width), dtype=np.uint8)
    kept, bad = 0, []
    bar = _progress(len(files), what)
    for path in files:
        try:
            with Image.open(path, formats=[IMAGE_SUFFIXES[path.suffix.lower()]]) as opened:
                image = opened.convert("L" if channels == 1 else "RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
            out[kept] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
            kept += 1
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            bad.append(f"{path}: {exc.__class__.__name__}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out[:kept], bad


def load_image_folder(root: Path, *, normal_classes: list[str], channels: int | None,
                      size: tuple[int, int] | None) -> ImageSet:
    """The folder's images, decoded (or read from the cache), split by its layout."""
    layout, train_files, tests = find_layout(root, normal_classes)
    if not train_files:
        raise ImageFolderError(f"{root}: no training images found (layout {layout})")
    shape = probe_shape(train_files, channels, size)
    test_files = [p for p, _ in tests]
    key = _cache_key(layout, train_files, test_files, shape)
    cached = CACHE_DIR / f"images-{key}.npz"
    if cached.is_file():
        with np.load(cached) as saved:
            train, test, labels = saved["train"], saved["test"], saved["labels"]
            skipped = [str(s) for s in saved["skipped"]]
        log.info("images of %s from the cache %s", root, cached)
    else:
        train, bad_train = decode(train_files, shape, what="train images")
        test, bad_test = decode(test_files, shape, what="test images")
        good_tests = [label for p, label in tests if not any(b.startswith(f"{p}:") for b in bad_test)]
        labels, skipped = np.asarray(good_tests, dtype=np.int64), bad_train + bad_test
        _refuse_mostly_bad(root, skipped, len(train_files) + len(test_files))
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}.npz")  # then renamed: readers never see half
        np.savez(partial, train=train, test=test, labels=labels, skipped=np.asarray(skipped, dtype=str))
        os.replace(partial, cached)
    if skipped:
        log.warning("%d of %d files could not be read and were skipped: %s%s", len(skipped),
                    len(train_files) + len(test_files), "; ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")
    counts = Counter(p.parent.name for p in [*train_files, *test_files])
    log.info("image folder %s: layout %s, %d train and %d test images, served as %dx%dx%d (C x H x W)%s", root,
             layout, len(train), len(test), *shape, "" if size and channels else " (inferred; set --image-size H W "
             "and --channels to choose)")
    return ImageSet(layout, train, test, labels, dict(counts), skipped)


def _refuse_mostly_bad(root: Path, bad: list[str], total: int) -> None:
    if total and len(bad) > MAX_BAD_SHARE * total:
        raise ImageFolderError(f"{root}: {len(bad)} of {total} files could not be read as images, e.g. "
                               f"{'; '.join(bad[:3])}")


def _cache_key(layout: str, train: list[Path], test: list[Path], shape: tuple[int, int, int]) -> str:
    """The files (names, sizes, times), which split each is in, the layout and the shape asked for."""
    digest = hashlib.sha256(repr((layout, shape)).encode())
    for split, files in (("train", train), ("test", test)):
        for path in files:
            stat = path.stat()
            digest.update(f"{split}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _progress(total: int, what: str):  # type: ignore[no-untyped-def]
    """tqdm on a terminal (nothing in a log file or a pipe)."""
    if not sys.stderr.isatty() or total < 200:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=f"decoding {what}", leave=False)
