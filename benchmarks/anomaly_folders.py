"""The generic image-folder path against the built-in Fashion-MNIST path, on the one-class protocol of
benchmarks/anomaly_fmnist.py: for each class, train on that class's training images, score all 10,000
test images, AUROC with that class normal and the other nine anomalous. Built-in: `--data fashion-mnist
--normal-classes c`. Folder: the same images written as grey 28x28 PNG files in the MVTec AD layout
(train/good = the class's training images, test/good = its test images, test/<other class> = the rest)
and trained with `--data FOLDER`. Same architecture, epochs and seed on both sides; one table.

    .venv/bin/python benchmarks/anomaly_folders.py [--classes 0 1 ...] [--epochs 20] [--workdir DIR]

The PNGs are written once into pools (all 70,000 images) and each class's layout links to them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.anomaly_common import onnx_scores, train_and_export  # noqa: E402
from training.data import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    DataSpec,
    _idx_file,
    load_dataset,
    load_fashion_mnist,
    read_idx,
)
from training.evaluate import auroc  # noqa: E402

VARIANTS = ("elbo", "elbo_knn")


def write_pools(root: Path) -> dict[str, list[Path]]:
    """Every training and test image as a PNG, in the IDX order: {"train-<c>": files, "test-<c>": files}."""
    from PIL import Image

    # The IDX files' own order, as the built-in path reads them before it keeps one class and splits.
    images = {split: read_idx(_idx_file(FASHION_MNIST_DIR, f"{idx}-images-idx3-ubyte"))
              for split, idx in (("train", "train"), ("test", "t10k"))}
    labels = {split: read_idx(_idx_file(FASHION_MNIST_DIR, f"{idx}-labels-idx1-ubyte"))
              for split, idx in (("train", "train"), ("test", "t10k"))}
    pools: dict[str, list[Path]] = {}
    for split in ("train", "test"):
        for c in range(10):
            folder = root / "pool" / f"{split}-{c}"
            folder.mkdir(parents=True, exist_ok=True)
            rows = images[split][labels[split] == c]
            pools[f"{split}-{c}"] = []
            for i, row in enumerate(rows):
                path = folder / f"{i:05d}.png"
                Image.fromarray(row, mode="L").save(path)
                pools[f"{split}-{c}"].append(path)
    return pools


def mvtec_layout(root: Path, pools: dict[str, list[Path]], normal: int) -> Path:
    """Class `normal` as train/good and test/good, every other class as a defect folder (symlinks)."""
    folder = root / f"class-{normal}"
    for sub, files in [("train/good", pools[f"train-{normal}"]), ("test/good", pools[f"test-{normal}"]),
                       *((f"test/{FASHION_MNIST_CLASSES[c].replace('/', '-').replace(' ', '-').lower()}",
                          pools[f"test-{c}"]) for c in range(10) if c != normal)]:
        target = folder / sub
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            link = target / file.name
            if not link.exists():
                link.symlink_to(file)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the folders here (default: a temp dir)")
    args = parser.parse_args()
    train_args = ["--likelihood", "gaussian", "--epochs", str(args.epochs), "--latent-dim", "16", "--hidden", "512",
                  "256", "--precision", "fp32", "--batch-size", "128", "--seed", "0"]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="anomaly-folders-"))
    start = time.perf_counter()
    pools = write_pools(workdir)
    print(f"wrote {sum(len(v) for v in pools.values())} PNGs in {time.perf_counter() - start:.0f} s", flush=True)
    test = load_fashion_mnist()
    rows: dict[str, dict[int, dict[str, float]]] = {"built-in": {}, "folder": {}}
    for c in args.classes:
        t0 = time.perf_counter()
        builtin = train_and_export(workdir / "runs" / f"builtin-{c}", ["--normal-classes", str(c), *train_args])
        scores = onnx_scores(builtin, test.test_x)
        rows["built-in"][c] = {v: 100 * auroc(scores[v], test.test_y != c) for v in VARIANTS}
        folder = mvtec_layout(workdir, pools, c)
        generic = train_and_export(workdir / "runs" / f"folder-{c}", ["--data", str(folder), *train_args])
        data = load_dataset(DataSpec(kind="images", path=str(folder)))  # the folder's own labelled test split
        scores = onnx_scores(generic, data.test_x)
        assert data.test_y is not None
        rows["folder"][c] = {v: 100 * auroc(scores[v], data.test_y == 1) for v in VARIANTS}
        print(f"class {c} ({FASHION_MNIST_CLASSES[c]}): " + "  ".join(
            f"{path} " + " ".join(f"{v} {rows[path][c][v]:.2f}" for v in VARIANTS) for path in rows)
            + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\nAUROC (%), one class normal, 10,000 test images; MLP 512-256, z 16, Gaussian, "
          f"{args.epochs} epochs, seed 0")
    print("path      variant   " + "".join(f"{c:>8}" for c in args.classes) + "      mean")
    for path, table in rows.items():
        for v in VARIANTS:
            values = [table[c][v] for c in args.classes]
            print(f"{path:<9} {v:<9} " + "".join(f"{x:>8.2f}" for x in values) + f"  {np.mean(values):>8.2f}")
    for v in VARIANTS:
        gap = np.mean([rows["folder"][c][v] - rows["built-in"][c][v] for c in args.classes])
        print(f"folder - built-in, mean {v}: {gap:+.2f} points")


if __name__ == "__main__":
    main()
