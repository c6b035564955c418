"""Conformal p-values and FDR control from a real server: the formula, uniformity on held-out normal
data, Benjamini–Hochberg on mixed batches, and models exported before p-values existed."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy import stats

from harness.servers import ServerProcess, start_server
from model.conformal import benjamini_hochberg, conformal_p_values, grid_p_values

ALPHA = 0.01
SPLITS = 20
FDR_Q = 0.1


def score(server: ServerProcess, x: np.ndarray, **options: object) -> dict:  # type: ignore[type-arg]
    buffer = io.BytesIO()
    np.save(buffer, x.astype(np.float32))
    query = "&".join(f"{k}={v}" for k, v in options.items())
    response = httpx.post(f"{server.url}/anomaly-score?{query}", content=buffer.getvalue(),
                          headers={"content-type": "application/x-npy"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_conformal_p_values_count_the_calibration_scores() -> None:
    calibration = np.array([1.0, 2.0, 2.0, 3.0])
    p = conformal_p_values(calibration, np.array([0.5, 2.0, 2.5, 3.0, 9.0]))
    np.testing.assert_allclose(p, np.array([5, 4, 2, 2, 1]) / 5)  # (1 + #{cal >= s}) / (n + 1)
    flags, cutoff = benjamini_hochberg(np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]), 0.05)
    assert flags.tolist() == [True, True] + [False] * 8 and cutoff == 0.008  # p_(2) <= 2q/m, p_(3) > 3q/m
    assert benjamini_hochberg(np.array([0.5, 0.9]), 0.1) == (pytest.approx([False, False]), 0.0)
    with pytest.raises(ValueError, match="q must be"):
        benjamini_hochberg(np.array([0.1]), 1.5)


def test_p_values_are_uniform_on_held_out_normal_data(server: ServerProcess, artifacts_dir: Path) -> None:
    """The tiny model is trained on every class: the 10,000 test images are normal data the
    calibration (the validation split) never saw. Each of 20 disjoint splits of 500 has a number
    of false alarms at p <= 0.01 inside the central 99.9% of its distribution over calibration sets
    and test items, Beta-binomial(500, l, n + 1 - l) with l = floor(0.01 (n + 1)) (Vovk 2012)."""
    from training.data import load_fashion_mnist

    test_x = load_fashion_mnist().test_x
    answers = [score(server, test_x[i:i + 1000]) for i in range(0, len(test_x), 1000)]
    assert {a["p_value_method"] for a in answers} == {"conformal"}
    results = [r for a in answers for r in a["results"]]
    scores, p = np.array([r["score"] for r in results]), np.array([r["p_value"] for r in results])
    calibration = np.asarray(json.loads((artifacts_dir / "manifest.json").read_text())["calibration"]["sorted_scores"]["elbo"])
    np.testing.assert_allclose(p, conformal_p_values(calibration, scores), rtol=0, atol=1e-12)
    n = len(calibration)
    l_ = int(np.floor(ALPHA * (n + 1)))
    split = len(p) // SPLITS
    low, high = stats.betabinom(split, l_, n + 1 - l_).ppf([0.0005, 0.9995])
    alarms = [int((p[i * split:(i + 1) * split] <= ALPHA).sum()) for i in range(SPLITS)]
    print(f"false alarms at p <= {ALPHA} per {split} items over {SPLITS} splits: {alarms} (99.9% interval "
          f"[{low:.0f}, {high:.0f}]); overall {np.mean(p <= ALPHA):.4f}")
    assert all(low <= a <= high for a in alarms), alarms
    for level in (0.05, 0.1, 0.5):  # the whole distribution, not only the 1% tail
        lo, hi = stats.betabinom(len(p), int(np.floor(level * (n + 1))), n + 1 - int(np.floor(level * (n + 1)))).ppf(
            [0.0005, 0.9995])
        assert lo <= (p <= level).sum() <= hi, level


def corrupted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Anomalies: half the pixels of an image replaced by noise."""
    mask = rng.random(x.shape) < 0.5
    return np.where(mask, rng.random(x.shape), x).astype(np.float32)


def test_benjamini_hochberg_keeps_the_false_discovery_rate_on_mixed_batches(server: ServerProcess) -> None:
    """40 batches of 90 held-out normal test images and 10 corrupted ones, flagged at fdr=0.1: the
    share of flagged items that are normal, averaged over batches, stays at most 0.1.

    The normal items must be exchangeable with the calibration data for the guarantee: for the
    one-class (trouser) model the test file's trousers are not quite (false alarms at p <= 0.1:
    11.5%; /drift sees the same shift, KS p 0.02), and its measured FDR was 0.12 at q = 0.1."""
    from training.data import load_fashion_mnist

    test_x = load_fashion_mnist().test_x
    rng = np.random.default_rng(0)
    fdp, power = [], []
    for batch in range(40):
        picked = rng.choice(len(test_x), 100, replace=False)
        x = np.concatenate([test_x[picked[:90]], corrupted(test_x[picked[90:]], rng)])
        answer = score(server, x, fdr=FDR_Q, seed=batch)
        flags = np.array([r["is_anomaly"] for r in answer["results"]])
        p = np.array([r["p_value"] for r in answer["results"]])
        expected, cutoff = benjamini_hochberg(p, FDR_Q)  # the server flags exactly what BH says
        assert flags.tolist() == expected.tolist() and answer["p_value_cutoff"] == cutoff
        if flags.any():
            flagged = np.array([r["score"] for r in answer["results"]])[flags]
            assert all(r["threshold"] == flagged.min() for r in answer["results"]) and answer["threshold_quantile"] is None
        fdp.append(flags[:90].sum() / max(1, flags.sum()))
        power.append(flags[90:].mean())
    print(f"BH at q={FDR_Q}: measured FDR {np.mean(fdp):.3f} (mean false discovery proportion over 40 batches), "
          f"power {np.mean(power):.3f}")
    assert np.mean(fdp) <= FDR_Q
    assert np.mean(power) >= 0.9, "BH should find these anomalies, or the test proves nothing"


def test_fdr_refuses_a_fixed_threshold_beside_it(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/anomaly-score", json={"inputs": [[0.0] * 784], "fdr": 0.1, "target_fpr": 0.01})
    assert response.status_code == 422 and "fdr" in response.json()["error"]
    assert httpx.post(server.url + "/anomaly-score",
                      json={"inputs": [[0.0] * 784], "fdr": 1.5}).status_code == 422


def test_models_exported_before_p_values_get_grid_p_values_and_no_drift_reference(
        artifacts_dir: Path, tmp_path: Path, test_images: np.ndarray) -> None:
    older = tmp_path / "older"
    shutil.copytree(artifacts_dir, older)
    manifest = json.loads((older / "manifest.json").read_text())
    exact_calibration = np.asarray(manifest["calibration"]["sorted_scores"]["elbo"])
    for key in ("sorted_scores", "sorted_scores_examples"):
        del manifest["calibration"][key]
    del manifest["drift_reference"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    proc = start_server(older, tmp_path / "logs")
    try:
        answer = score(proc, test_images)
        assert answer["p_value_method"] == "quantile_grid"
        p, scores = (np.array([r[k] for r in answer["results"]]) for k in ("p_value", "score"))
        np.testing.assert_allclose(p, conformal_p_values(exact_calibration, scores), atol=0.002)  # a 0.1% grid
        cal = manifest["calibration"]
        np.testing.assert_allclose(p, grid_p_values(np.asarray(cal["quantile_levels"]),
                                                    np.asarray(cal["variants"]["elbo"]["quantiles"]),
                                                    cal["examples"], scores))
        (model,) = httpx.get(proc.url + "/drift").json()["models"]
        assert model["reference"] is None and model["status"].startswith("no reference") and not model["drifting"]
    finally:
        proc.stop()
