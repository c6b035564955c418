"""Labels in, threshold out: one-class Fashion-MNIST, a few classes. Each class's model is trained on
that class only and scores the 10,000 test images (the exported scorer, ONNX Runtime). A share of the
test anomalies (1%, 5%, 10%) is labelled, with as many normals; the rest is held out. On the held-out
rest: F1 and false-positive rate of the unlabelled threshold (the export's, the 99th percentile of the
normal calibration scores) against the threshold `POST /models/{name}/threshold/recalibrate` chooses
(service/core/recalibrate.py, the code the route runs) from the labels and the calibration scores.
Means over --splits random splits.

    flock /tmp/vaeserve-heavy.lock .venv/bin/python benchmarks/feedback_recalibration.py [--classes 0 1 7]
        [--splits 5] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.anomaly_common import onnx_scores, train_and_export  # noqa: E402
from service.core.recalibrate import choose_threshold  # noqa: E402
from training.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402

FRACTIONS = (0.01, 0.05, 0.10)
METHODS = ("unlabelled (export's threshold)", "f1, prevalence from the labels", "f1, prevalence known",
           "target_fpr 0.05, labelled normals pooled")


def f1_and_fpr(scores: np.ndarray, anomalous: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = scores > threshold
    tp, fp = int((flagged & anomalous).sum()), int((flagged & ~anomalous).sum())
    fn = int((~flagged & anomalous).sum())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return f1, fp / max(1, int((~anomalous).sum()))


def thresholds(method: str, *, default: float, labelled: np.ndarray, truth: np.ndarray, calibration: np.ndarray,
               rest_prevalence: float) -> float:
    anomalies, normals = labelled[truth], labelled[~truth]
    if method.startswith("unlabelled"):
        return default
    if method == "f1, prevalence from the labels":
        return choose_threshold(goal="f1", target=None, anomalies=anomalies, normals=normals,
                                calibration=calibration).threshold
    if method == "f1, prevalence known":
        return choose_threshold(goal="f1", target=None, anomalies=anomalies, normals=normals, calibration=calibration,
                                prevalence=rest_prevalence).threshold
    return choose_threshold(goal="target_fpr", target=0.05, anomalies=anomalies, normals=normals,
                            calibration=calibration).threshold


def one_class(c: int, *, epochs: int, splits: int, tmp: Path) -> dict[tuple[str, float], list[tuple[float, float]]]:
    data = load_fashion_mnist()
    artifacts = train_and_export(tmp / f"class-{c}", ["--normal-classes", str(c), "--epochs", str(epochs),
                                                      "--likelihood", "gaussian", "--hidden", "512", "256",
                                                      "--latent-dim", "16", "--batch-size", "128", "--seed", "0"])
    manifest = json.loads((artifacts / "manifest.json").read_text())
    calibration = np.asarray(manifest["calibration"]["sorted_scores"]["elbo"], dtype=np.float64)
    default = float(manifest["calibration"]["variants"]["elbo"]["threshold"])
    scores = onnx_scores(artifacts, data.test_x)["elbo"].astype(np.float64)
    anomalous = np.asarray(data.test_y != c)
    out: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for fraction in FRACTIONS:
        for split in range(splits):
            rng = np.random.default_rng(1000 * c + split)
            k = int(round(fraction * anomalous.sum()))
            picked = np.concatenate([rng.choice(np.nonzero(anomalous)[0], k, replace=False),
                                     rng.choice(np.nonzero(~anomalous)[0], k, replace=False)])
            rest = np.ones(len(scores), dtype=bool)
            rest[picked] = False
            prevalence = float(anomalous[rest].mean())
            for method in METHODS:
                t = thresholds(method, default=default, labelled=scores[picked], truth=anomalous[picked],
                               calibration=calibration, rest_prevalence=prevalence)
                out.setdefault((method, fraction), []).append(f1_and_fpr(scores[rest], anomalous[rest], t))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1, 7])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.classes:
            start = time.perf_counter()
            for key, values in one_class(c, epochs=args.epochs, splits=args.splits, tmp=Path(tmp)).items():
                results.setdefault(key, []).extend(values)
            print(f"class {c} ({FASHION_MNIST_CLASSES[c]}) done in {time.perf_counter() - start:.0f}s", flush=True)
    print(f"\nHeld-out F1 / FPR, means over {args.splits} splits x classes {args.classes} (elbo, one class normal)")
    print(f"{'threshold':<42}" + "".join(f"{f'{f:.0%} labelled':>22}" for f in FRACTIONS))
    for method in METHODS:
        cells = []
        for fraction in FRACTIONS:
            values = np.array(results[method, fraction])  # (splits x classes, 2)
            cells.append(f"F1 {values[:, 0].mean():.3f} FPR {values[:, 1].mean():.3f}")
        print(f"{method:<42}" + "".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()
