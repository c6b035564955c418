"""Tabular anomaly detection, vaeserve vs PyOD side by side, on scikit-learn's bundled data.

Protocol: one class is normal, the other(s) anomalous. Train on a random 70% of the normal rows;
evaluate on the held-out normal rows plus every anomalous row. vaeserve trains a Gaussian VAE on
standardized features (`vaeserve train --data train.npy`) and scores with the exported ONNX scorer;
PyOD's IForest, ECOD and VAE are fitted on the same training rows.

    .venv/bin/python benchmarks/anomaly_tabular.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.anomaly_common import onnx_scores, train_and_export  # noqa: E402
from model.heads import SCORE_VARIANTS  # noqa: E402
from training.evaluate import auroc  # noqa: E402


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(features, is_anomaly) per dataset."""
    cancer = load_breast_cancer()
    wine = load_wine()
    return {
        "breast-cancer (benign normal)": (cancer.data, cancer.target == 0),  # target 0 = malignant
        "wine (class 0 normal)": (wine.data, wine.target != 0),
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    for name, (x, is_anomaly) in datasets().items():
        results: dict[str, list[float]] = {}
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            normal = rng.permutation(np.flatnonzero(~is_anomaly))
            n_train = int(0.7 * len(normal))
            train, held_out = x[normal[:n_train]], x[normal[n_train:]]
            test = np.concatenate([held_out, x[is_anomaly]])
            labels = np.concatenate([np.zeros(len(held_out), bool), np.ones(int(is_anomaly.sum()), bool)])
            with tempfile.TemporaryDirectory() as tmp:
                np.save(Path(tmp) / "train.npy", train.astype(np.float32))
                artifacts = train_and_export(Path(tmp) / "run", [
                    "--data", str(Path(tmp) / "train.npy"), "--val-fraction", "0.2", "--hidden", "64", "32",
                    "--latent-dim", "4", "--epochs", str(args.epochs), "--batch-size", "32", "--lr", "1e-3",
                    "--seed", str(seed)])
                ours = onnx_scores(artifacts, test.astype(np.float32))
            for variant in SCORE_VARIANTS:
                results.setdefault(f"vaeserve {variant}", []).append(100 * auroc(ours[variant], labels))
            for detector, scores in pyod_scores(train, test, seed).items():
                results.setdefault(detector, []).append(100 * auroc(scores, labels))
        print(f"\n{name}: {len(x)} rows, {x.shape[1]} features, {int(is_anomaly.sum())} anomalous; "
              f"AUROC (%) mean ± sd over seeds {args.seeds}")
        for detector, values in sorted(results.items(), key=lambda kv: -np.mean(kv[1])):
            print(f"  {detector:<22} {np.mean(values):5.1f} ± {np.std(values):4.1f}")


if __name__ == "__main__":
    main()
