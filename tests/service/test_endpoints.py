"""Every endpoint against a real uvicorn server: numbers equal the PyTorch model's, answers are
reproducible, concurrent requests share batches, and the operational endpoints behave."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess

import httpx
import numpy as np
import pytest
import torch

from harness.servers import ServerProcess
from model.latent import interpolate
from tests.conftest import without_score_ids


def post(server: ServerProcess, path: str, body: dict, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def, type-arg]
    return httpx.post(server.url + path, json=body, timeout=30, **kwargs)


def test_health_ready_and_model_card(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "alive"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    card = httpx.get(server.url + "/model").json()
    assert card["model"] == {"name": "tiny-vae", "version": "1"}
    assert card["backend"] == "onnxruntime" and card["device"] == "cpu"
    assert card["input"]["shape"] == [1, 28, 28] and card["latent_dim"] == 8
    assert set(card["score_variants"]) >= {"elbo", "iwae"}
    assert card["calibration"]["variants"]["elbo"]["threshold"] > 0


def test_encode_matches_pytorch(server: ServerProcess, tiny_model, test_images) -> None:  # type: ignore[no-untyped-def]
    body = post(server, "/encode", {"inputs": test_images[:5].tolist(), "sample": True, "seed": 7}).json()
    with torch.no_grad():
        mu, log_var = tiny_model.encoder(torch.from_numpy(test_images[:5]))
    np.testing.assert_allclose(body["mu"], mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(body["log_var"], log_var.numpy(), atol=1e-5)
    eps = np.random.default_rng(7).standard_normal((5, 8), dtype=np.float32)
    np.testing.assert_allclose(body["z"], mu.numpy() + np.exp(0.5 * log_var.numpy()) * eps, atol=1e-5)
    assert body["model"] == {"name": "tiny-vae", "version": "1"}


def test_reconstruct_matches_pytorch_in_the_callers_layout(server: ServerProcess, tiny_model, test_images) -> None:  # type: ignore[no-untyped-def]
    expected = tiny_model.reconstruct(torch.from_numpy(test_images[:3])).numpy()
    flat = post(server, "/reconstruct", {"inputs": test_images[:3].tolist()}).json()["reconstructions"]
    np.testing.assert_allclose(flat, expected, atol=1e-5)
    nested = post(server, "/reconstruct", {"inputs": test_images[:3].reshape(3, 28, 28).tolist()}).json()
    assert np.shape(nested["reconstructions"]) == (3, 1, 28, 28)
    np.testing.assert_allclose(np.reshape(nested["reconstructions"], (3, 784)), expected, atol=1e-5)


def test_sample_matches_pytorch_and_is_reproducible(server: ServerProcess, tiny_model) -> None:  # type: ignore[no-untyped-def]
    body = post(server, "/sample", {"n": 6, "seed": 3, "temperature": 0.5}).json()
    z = np.random.default_rng(3).standard_normal((6, 8), dtype=np.float32) * np.float32(0.5)
    np.testing.assert_allclose(body["latents"], z, atol=1e-6)
    np.testing.assert_allclose(body["samples"], tiny_model.generate(torch.from_numpy(z)).numpy(), atol=1e-5)
    assert post(server, "/sample", {"n": 6, "seed": 3, "temperature": 0.5}).json() == body


def test_sample_as_png_grid(server: ServerProcess) -> None:
    response = post(server, "/sample", {"n": 4}, headers={"accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG") and response.headers["x-model-version"] == "1"


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_between_inputs_matches_pytorch(server: ServerProcess, tiny_model, test_images, method: str) -> None:  # type: ignore[no-untyped-def]
    body = post(server, "/interpolate", {"start": test_images[0].tolist(), "end": test_images[1].tolist(),
                                         "steps": 5, "method": method}).json()
    with torch.no_grad():
        mu, _ = tiny_model.encoder(torch.from_numpy(test_images[:2]))
    latents = interpolate(mu[0].numpy(), mu[1].numpy(), steps=5, method=method)
    np.testing.assert_allclose(body["latents"], latents, atol=1e-5)
    np.testing.assert_allclose(body["outputs"], tiny_model.generate(torch.from_numpy(latents)).numpy(), atol=1e-5)


def test_interpolate_between_latents(server: ServerProcess) -> None:
    body = post(server, "/interpolate", {"z_start": [0.0] * 8, "z_end": [1.0] * 8, "steps": 3}).json()
    np.testing.assert_allclose(body["latents"][1], [0.5] * 8)
    assert np.shape(body["outputs"]) == (3, 784)


def test_anomaly_scores_equal_pytorch_negative_elbo_for_the_same_noise(server: ServerProcess, tiny_model, test_images) -> None:  # type: ignore[no-untyped-def]
    request = {"inputs": test_images[:4].tolist(), "mc_samples": 8, "seed": 11, "explain": True}
    body = post(server, "/anomaly-score", request).json()
    eps = np.random.default_rng(11).standard_normal((4, 8, 8), dtype=np.float32)
    with torch.no_grad():
        terms = tiny_model.monte_carlo_terms(torch.from_numpy(test_images[:4]), torch.from_numpy(eps))
    recon = -terms.log_px_features.double().sum(-1).mean(1).numpy()
    kl = terms.kl_dims.double().sum(-1).numpy()
    results = body["results"]
    np.testing.assert_allclose([r["score"] for r in results], recon + kl, rtol=1e-5)
    np.testing.assert_allclose([r["reconstruction_nll"] for r in results], recon, rtol=1e-5)
    np.testing.assert_allclose([r["kl"] for r in results], kl, rtol=1e-4, atol=1e-5)
    for r in results:
        assert sum(r["feature_nll"]) == pytest.approx(r["reconstruction_nll"], rel=1e-9)
        assert 0 <= r["percentile"] <= 100 and r["is_anomaly"] == (r["score"] > r["threshold"])
    again = post(server, "/anomaly-score", request).json()
    assert without_score_ids(again) == without_score_ids(body), "same request, same scores"


def test_iwae_scores_are_lower_than_elbo_scores_on_average(server: ServerProcess, test_images) -> None:  # type: ignore[no-untyped-def]
    base = {"inputs": test_images[:16].tolist(), "mc_samples": 32, "seed": 0}
    elbo = [r["score"] for r in post(server, "/anomaly-score", base).json()["results"]]
    iwae = [r["score"] for r in post(server, "/anomaly-score", {**base, "score": "iwae"}).json()["results"]]
    assert np.mean(iwae) < np.mean(elbo)


def test_target_fpr_moves_the_threshold_along_the_calibration(server: ServerProcess, test_images) -> None:  # type: ignore[no-untyped-def]
    def threshold(**kw: float) -> float:
        return post(server, "/anomaly-score", {"inputs": test_images[:1].tolist(), **kw}).json()["results"][0]["threshold"]
    assert threshold(target_fpr=0.2) < threshold(target_fpr=0.05) < threshold(target_fpr=0.001)


def test_png_inputs_are_scored(server: ServerProcess, test_images) -> None:  # type: ignore[no-untyped-def]
    from tests.service.test_inputs import png_of

    png = png_of(test_images[0].reshape(28, 28))
    body = post(server, "/reconstruct", {"inputs": [png]}).json()
    assert base64.b64decode(body["reconstructions"][0]).startswith(b"\x89PNG")
    assert post(server, "/anomaly-score", {"inputs": [png]}).status_code == 200


def test_concurrent_requests_are_merged_into_batches(server: ServerProcess, test_images) -> None:  # type: ignore[no-untyped-def]
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/anomaly-score", json={"inputs": [test_images[i % 32].tolist()]})
                                               for i in range(64)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 64
    text = httpx.get(server.url + "/metrics").text
    # The default variant (elbo) is computed by the scorer without the neighbour bank.
    labels = 'graph="scorer_core",model="tiny-vae",version="1"'
    count = _sample(text, f"vaeserve_batch_size_items_count{{{labels}}}")
    singles = _sample(text, 'vaeserve_batch_size_items_bucket{graph="scorer_core",le="1.0",model="tiny-vae",version="1"}')
    assert count > 0 and count - singles > 0, "some executed batches held more than one item"


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in exposition")


def test_metrics_exposition_passes_promtool(server: ServerProcess) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install Debian's prometheus (make test-debs)"
    post(server, "/anomaly-score", {"inputs": [[0.5] * 784]})
    text = httpx.get(server.url + "/metrics").text
    for name in ("vaeserve_requests_total", "vaeserve_request_latency_seconds_bucket", "vaeserve_queue_wait_seconds",
                 "vaeserve_inference_seconds", "vaeserve_batch_size_items", "vaeserve_queue_depth_items",
                 "vaeserve_anomaly_score_nats", "vaeserve_model_info"):
        assert name in text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
