"""Anomaly scoring that backends can trust: every variant calibrated on normal data, percentiles
monotone, thresholds for a target false-positive rate hold on held-out normal data, explanations."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.servers import ServerProcess

VARIANTS = ["elbo", "iwae", "elbo_latent", "elbo_knn"]


@pytest.fixture(scope="module")
def held_out_normal() -> np.ndarray:
    """Test images: the tiny model was trained on all classes, so all are normal for it."""
    from training.data import load_fashion_mnist

    return load_fashion_mnist().test_x[:1000]


def score(server: ServerProcess, x: np.ndarray, **options: object) -> list[dict]:  # type: ignore[type-arg]
    buffer = io.BytesIO()
    np.save(buffer, x)
    query = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
    response = httpx.post(f"{server.url}/anomaly-score?{query}", content=buffer.getvalue(),
                          headers={"content-type": "application/x-npy"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_every_variant_is_listed_and_calibrated(server: ServerProcess) -> None:
    card = httpx.get(server.url + "/model").json()
    assert sorted(card["score_variants"]) == sorted(VARIANTS)
    for variant in VARIANTS:
        cal = card["calibration"]["variants"][variant]
        assert cal["p50"] <= cal["p90"] <= cal["p99"] <= cal["p99.9"] and cal["threshold"] == pytest.approx(cal["p99"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_percentiles_are_monotone_in_the_score(server: ServerProcess, held_out_normal: np.ndarray, variant: str) -> None:
    results = score(server, held_out_normal[:300], score=variant)
    pairs = sorted((r["score"], r["percentile"]) for r in results)
    percentiles = [p for _, p in pairs]
    assert all(a <= b for a, b in zip(percentiles, percentiles[1:]))
    assert 0 <= percentiles[0] and percentiles[-1] <= 100


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fpr", [0.05, 0.2])
def test_a_threshold_for_fpr_f_flags_about_f_of_held_out_normal_data(server: ServerProcess, held_out_normal: np.ndarray,
                                                                    variant: str, fpr: float) -> None:
    results = score(server, held_out_normal, score=variant, target_fpr=fpr)
    flagged = np.mean([r["is_anomaly"] for r in results])
    # 1000 examples: the binomial standard error at f = 0.2 is 0.013; allow for calibration noise too.
    assert abs(flagged - fpr) < max(0.03, fpr * 0.35), f"{variant}: flagged {flagged:.3f} for target {fpr}"


@pytest.mark.parametrize("combined", ["elbo_latent", "elbo_knn"])
def test_a_combined_variant_is_elbo_standardized_plus_a_noise_free_part(server: ServerProcess,
                                                                       held_out_normal: np.ndarray, combined: str) -> None:
    elbo = np.array([r["score"] for r in score(server, held_out_normal[:200], score="elbo", seed=3)])
    both = np.array([r["score"] for r in score(server, held_out_normal[:200], score=combined, seed=3)])
    # Same noise, so both - elbo/sd_elbo is the latent or neighbour part alone: it must not depend on the noise.
    elbo_b = np.array([r["score"] for r in score(server, held_out_normal[:200], score="elbo", seed=4)])
    both_b = np.array([r["score"] for r in score(server, held_out_normal[:200], score=combined, seed=4)])
    slope = np.polyfit(elbo - elbo_b, both - both_b, 1)[0]  # 1 / sd of elbo on normal data
    assert slope > 0
    np.testing.assert_allclose(both - slope * elbo, both_b - slope * elbo_b, atol=1e-6)


def test_a_variant_the_benchmark_dropped_is_refused(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/anomaly-score", json={"inputs": [[0.5] * 784], "score": "latent"})
    assert response.status_code == 422 and "score" in response.json()["error"]


def test_explanations_sum_to_the_reconstruction_term_and_draw_a_heatmap(server: ServerProcess,
                                                                       held_out_normal: np.ndarray) -> None:
    results = score(server, held_out_normal[:3], explain=True, heatmap=True)
    for r in results:
        assert sum(r["feature_nll"]) == pytest.approx(r["reconstruction_nll"], rel=1e-9)
        image = Image.open(io.BytesIO(base64.b64decode(r["heatmap_png"])))
        assert image.size == (28, 28)
        hottest = int(np.argmax(r["feature_nll"]))
        assert np.asarray(image).reshape(-1)[hottest] == 255, "the least-explained pixel is the brightest"


def _executed_batches(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    prefix = 'vaeserve_batch_size_items_count{graph="'
    return {line[len(prefix):].split('"')[0]: float(line.split()[-1])
            for line in text.splitlines() if line.startswith(prefix)}


def test_each_variant_runs_on_the_smallest_graph_that_computes_it(server: ServerProcess,
                                                                  held_out_normal: np.ndarray) -> None:
    before = _executed_batches(server)
    score(server, held_out_normal[:3], score="elbo_knn")
    after_knn = _executed_batches(server)
    score(server, held_out_normal[:3], score="elbo_latent")
    after_latent = _executed_batches(server)
    assert after_knn["scorer"] > before.get("scorer", 0) and after_knn["scorer_core"] == before.get("scorer_core", 0)
    assert after_latent["scorer_core"] > after_knn["scorer_core"] and after_latent["scorer"] == after_knn["scorer"]


def test_a_model_exported_without_scorer_core_scores_every_variant_on_scorer(
        server: ServerProcess, artifacts_dir: Path, tmp_path: Path, held_out_normal: np.ndarray) -> None:
    from service.core.metrics import Metrics
    from service.core.registry import ModelRegistry
    from service.settings import Settings

    older = tmp_path / "older"
    shutil.copytree(artifacts_dir, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["graphs"]["scorer_core"]
    for ext in ("onnx", "pt"):
        del manifest["files"][f"scorer_core.{ext}"]
        (older / f"scorer_core.{ext}").unlink()
    (older / "manifest.json").write_text(json.dumps(manifest))
    x = held_out_normal[:20]

    async def scores_in_process() -> dict[str, np.ndarray]:
        registry = ModelRegistry(Settings(artifacts_dir=older), Metrics())
        handle = await registry.sync.load_folder(older, initial=True)
        try:
            assert set(handle.batchers) == {"encoder", "decoder", "scorer"}
            return {v: (await handle.score(x, variant=v, mc_samples=4, seed=7))[f"{v}_score"] for v in VARIANTS}
        finally:
            await registry.shutdown()

    for variant, values in asyncio.run(scores_in_process()).items():
        served = [r["score"] for r in score(server, x, score=variant, mc_samples=4, seed=7)]
        np.testing.assert_allclose(values, served, rtol=1e-6, err_msg=variant)
