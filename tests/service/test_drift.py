"""Drift of the inputs: the statistics against scipy's, the windows' bounds, and a real server that
stays quiet on held-out normal data and says `drifting` within a few requests of another class."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy import stats

from harness.servers import ServerProcess, start_server
from service.core.drift import DriftReference, Window, ks_distance, ks_p_value, population_stability
from tests.conftest import ONE_CLASS

ITEMS_PER_REQUEST = 10
# Drift must show within this many 10-item requests of another class (100 items in a window of
# 1,000 that held 1,000 normal items before). Measured here: see test_another_class_drifts_within_n_requests.
DRIFT_WITHIN_REQUESTS = 10


def test_ks_distance_and_p_value_match_scipy() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(20_000)
    levels = np.linspace(0, 1, 201)
    quantiles = np.quantile(reference, levels)
    for shift in (0.0, 0.15, 0.4):
        window = np.sort(rng.standard_normal(500) + shift)
        exact = stats.ks_2samp(window, reference)
        distance = ks_distance(window, levels, quantiles)
        assert distance == pytest.approx(exact.statistic, abs=0.006)  # the 0.5% grid's resolution
        assert ks_p_value(exact.statistic, 500, 20_000) == pytest.approx(exact.pvalue, rel=0.1, abs=1e-3)


def test_psi_is_zero_on_the_reference_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal(10_000)
    edges = np.quantile(reference, np.arange(1, 10) / 10)
    expected = np.full(10, 0.1)
    same = population_stability(rng.standard_normal(1000), edges, expected)
    moved = population_stability(rng.standard_normal(1000) + 1.0, edges, expected)
    assert same < 0.03 < 0.25 < moved
    assert population_stability(np.full(100, 10.0), edges, expected) > 5  # all in one bin: large, finite


def test_window_keeps_the_last_items_of_the_last_seconds() -> None:
    window = Window(max_items=25, max_age_s=10.0)
    for i in range(10):
        window.add(np.full(10, float(i)), now=float(i))
    values = window.values(now=9.0)
    assert values is not None and len(values) == 25 and values[0] == 7.0 and values[-1] == 9.0
    late = window.values(now=18.5)  # only the block added at t=9 is younger than 10 s
    assert late is not None and set(late.tolist()) == {9.0}
    assert window.values(now=100.0) is None


def test_reference_is_absent_for_models_exported_before_it() -> None:
    assert DriftReference.from_manifest({"calibration": {}}) is None


@pytest.fixture(scope="module")
def drift_server(one_class_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(one_class_artifacts, tmp_path_factory.mktemp("drift"), drift_window_items=1000,
                        drift_min_items=200)
    yield proc
    proc.stop()


def _score(server: ServerProcess, x: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, x.astype(np.float32))
    response = httpx.post(server.url + "/anomaly-score", content=buffer.getvalue(),
                          headers={"content-type": "application/x-npy"}, timeout=30)
    assert response.status_code == 200, response.text


def _drift(server: ServerProcess) -> dict:  # type: ignore[type-arg]
    response = httpx.get(server.url + "/drift", timeout=10)
    assert response.status_code == 200, response.text
    (model,) = response.json()["models"]
    return model  # type: ignore[no-any-return]


def test_another_class_drifts_within_n_requests(drift_server: ServerProcess) -> None:
    from training.data import load_fashion_mnist

    data = load_fashion_mnist()
    assert data.test_y is not None
    normal, other = data.test_x[data.test_y == ONE_CLASS], data.test_x[data.test_y == 0]  # trousers vs t-shirts
    assert _drift(drift_server)["latent"]["status"].startswith("collecting (0 of 200")
    for start in range(0, len(normal), ITEMS_PER_REQUEST):  # 100 requests, 1,000 held-out normal items
        _score(drift_server, normal[start:start + ITEMS_PER_REQUEST])
        if start + ITEMS_PER_REQUEST >= 200 and start % 50 == 0:
            report = _drift(drift_server)
            assert not report["drifting"], json.dumps(report, indent=1)
    quiet = _drift(drift_server)
    assert quiet["latent"]["items"] == 1000 and quiet["scores"]["elbo"]["items"] == 1000
    for request in range(1, 51):
        _score(drift_server, other[(request - 1) * ITEMS_PER_REQUEST:request * ITEMS_PER_REQUEST])
        report = _drift(drift_server)
        if report["drifting"]:
            break
    print(f"drifting after {request} requests of {ITEMS_PER_REQUEST} t-shirts: latent KS p {report['latent']['ks']['p_value']:.2e}, "
          f"max mean shift {report['latent']['max_mean_shift_sd']:.2f} sd, PSI {report['scores']['elbo'].get('psi', 0):.3f}; "
          f"before: KS p {quiet['latent']['ks']['p_value']:.2f}, shift {quiet['latent']['max_mean_shift_sd']:.2f} sd, "
          f"PSI {quiet['scores']['elbo']['psi']:.3f}")
    assert report["drifting"] and request <= DRIFT_WITHIN_REQUESTS, json.dumps(report, indent=1)
    metrics = httpx.get(drift_server.url + "/metrics").text
    assert 'vaeserve_drift_detected{model="one-class-vae",version="1"} 1.0' in metrics
    assert 'vaeserve_drift_window_items{model="one-class-vae",version="1",window="latent"} 1000.0' in metrics
