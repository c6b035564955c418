"""Tabular anomaly detection, vaeserve vs PyOD side by side, on scikit-learn's bundled data.

Protocol: one class is normal, the other(s) anomalous. Train on a random 70% of the normal rows;
evaluate on the held-out normal rows plus every anomalous row. vaeserve trains a Gaussian VAE on
standardized features (`vaeserve train --data train.npy`, of which it holds out 20% for early
stopping and calibration) and scores with the exported ONNX scorer; PyOD's IForest, ECOD and VAE
are fitted on the same training rows. Each seed draws its own split; the last lines compare the
best of each side seed by seed (paired: both sides see the same split).

    .venv/bin/python benchmarks/anomaly_tabular.py [--seeds 0 1 2 ...] [--jobs 2]
    .venv/bin/python benchmarks/anomaly_tabular.py --train-args="--latent-dim 8"   # another VAE setting
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import sys
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.anomaly_common import one_thread, onnx_scores, train_and_export  # noqa: E402
from model.contract import SCORE_VARIANTS  # noqa: E402
from training.evaluate import auroc  # noqa: E402

TRAIN_ARGS = ["--val-fraction", "0.2", "--hidden", "64", "32", "--latent-dim", "4", "--epochs", "300",
              "--batch-size", "32", "--lr", "1e-3"]


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(features, is_anomaly) per dataset."""
    cancer = load_breast_cancer()
    wine = load_wine()
    return {
        "breast-cancer (benign normal)": (cancer.data, cancer.target == 0),  # target 0 = malignant
        "wine (class 0 normal)": (wine.data, wine.target != 0),
    }


def split(x: np.ndarray, is_anomaly: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, test rows, test labels): 70% of the normal rows train, the rest and every anomaly test."""
    normal = np.random.default_rng(seed).permutation(np.flatnonzero(~is_anomaly))
    n_train = int(0.7 * len(normal))
    test = np.concatenate([x[normal[n_train:]], x[is_anomaly]])
    labels = np.concatenate([np.zeros(len(normal) - n_train, bool), np.ones(int(is_anomaly.sum()), bool)])
    return x[normal[:n_train]], test, labels


def vaeserve_scores(train: np.ndarray, test: np.ndarray, seed: int, train_args: list[str]) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "train.npy", train.astype(np.float32))
        artifacts = train_and_export(Path(tmp) / "run", ["--data", str(Path(tmp) / "train.npy"), *train_args,
                                                          "--seed", str(seed)])
        scores = onnx_scores(artifacts, test.astype(np.float32))
    return {f"vaeserve {variant}": scores[variant] for variant in SCORE_VARIANTS}


def pyod_scores(train: np.ndarray, test: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.vae import VAE

    mean, std = train.mean(0), train.std(0) + 1e-9
    train_s, test_s = (train - mean) / std, (test - mean) / std
    detectors = {"PyOD IForest": IForest(random_state=seed), "PyOD ECOD": ECOD(),
                 "PyOD VAE": VAE(random_state=seed, verbose=0, epoch_num=100)}
    scores = {}
    for name, detector in detectors.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector.fit(train_s)
            scores[name] = detector.decision_function(test_s)
    return scores


def run_seed(name: str, seed: int, train_args: list[str]) -> tuple[str, dict[str, float]]:
    """AUROC (%) of every detector on one dataset's split for this seed."""
    x, is_anomaly = datasets()[name]
    train, test, labels = split(x, is_anomaly, seed)
    scores = {**vaeserve_scores(train, test, seed, train_args), **pyod_scores(train, test, seed)}
    return name, {detector: 100 * auroc(values, labels) for detector, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--train-args", default="", help="extra `vaeserve train` arguments (they override "
                        f"the defaults: {' '.join(TRAIN_ARGS)})")
    parser.add_argument("--jobs", type=int, default=1, help="splits run at once, one CPU thread each")
    args = parser.parse_args()
    train_args = [*TRAIN_ARGS, *shlex.split(args.train_args)]  # argparse keeps the last of a repeated option
    names = list(datasets())
    jobs = [(name, seed) for name in names for seed in args.seeds]
    results: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=one_thread if args.jobs > 1 else None) as pool:
        for name, row in pool.map(run_seed, *zip(*jobs), [train_args] * len(jobs)):
            for detector, value in row.items():
                results[name].setdefault(detector, []).append(value)
    print(f"vaeserve train arguments: {' '.join(train_args)}")
    for name, table in results.items():
        x, is_anomaly = datasets()[name]
        print(f"\n{name}: {len(x)} rows, {x.shape[1]} features, {int(is_anomaly.sum())} anomalous; "
              f"AUROC (%) mean ± sd over seeds {args.seeds}")
        for detector, values in sorted(table.items(), key=lambda kv: -np.mean(kv[1])):
            print(f"  {detector:<22} {np.mean(values):6.2f} ± {np.std(values):4.1f}")
        ours = max((d for d in table if d.startswith("vaeserve")), key=lambda d: np.mean(table[d]))
        theirs = max((d for d in table if d.startswith("PyOD")), key=lambda d: np.mean(table[d]))
        gap = np.subtract(table[ours], table[theirs])
        standard_error = gap.std(ddof=1) / np.sqrt(len(gap)) if len(gap) > 1 else float("nan")
        print(f"  best vaeserve ({ours}) - best PyOD ({theirs}), paired over seeds: "
              f"{gap.mean():+.2f} ± {standard_error:.2f} (standard error)")


if __name__ == "__main__":
    main()
