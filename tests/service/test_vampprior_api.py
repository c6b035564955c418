"""A real server on an exported VampPrior model: /anomaly-score and /sample equal PyTorch's for the same
noise, /encode is unchanged; and artifacts exported before priors existed still serve."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from harness.servers import ServerProcess, start_server
from model.prior import mixture_sample
from tests.conftest import without_score_ids
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def vamp_server(vampprior_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(vampprior_artifacts, tmp_path_factory.mktemp("vamp-logs"), batch_wait_timeout_s=0.002)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def vamp_model(vampprior_run: Path):  # type: ignore[no-untyped-def]
    model, _ = load_checkpoint(vampprior_run / "best.pt")
    return model


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:  # type: ignore[type-arg]
    return httpx.post(server.url + path, json=body, timeout=30)


@pytest.mark.parametrize("variant", ["elbo", "iwae"])
def test_anomaly_scores_equal_pytorch_with_the_mixture_prior(vamp_server: ServerProcess, vamp_model, test_images,
                                                             variant: str) -> None:  # type: ignore[no-untyped-def]
    request = {"inputs": test_images[:5].tolist(), "mc_samples": 8, "seed": 7, "score": variant}
    response = post(vamp_server, "/anomaly-score", request)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    eps = np.random.default_rng(7).standard_normal((5, 8, 8), dtype=np.float32)  # the service's noise for seed 7
    with torch.no_grad():
        terms = vamp_model.monte_carlo_terms(torch.from_numpy(test_images[:5]), torch.from_numpy(eps),
                                             reduce_dtype=torch.float64)
    recon = -terms.log_px_features.sum(-1).mean(1).numpy()
    want = recon + terms.kl.numpy() if variant == "elbo" else -(torch.logsumexp(terms.log_weights, 1) - np.log(8)).numpy()
    np.testing.assert_allclose([r["score"] for r in results], want, rtol=1e-5)
    np.testing.assert_allclose([r["kl"] for r in results], terms.kl.numpy(), rtol=1e-4, atol=1e-4)
    again = post(vamp_server, "/anomaly-score", request).json()
    assert without_score_ids(again) == without_score_ids(response.json()), "same request, same scores"


def test_sample_draws_from_the_mixture_as_pytorch_does(vamp_server: ServerProcess, vamp_model) -> None:  # type: ignore[no-untyped-def]
    body = post(vamp_server, "/sample", {"n": 9, "seed": 3, "temperature": 0.5}).json()
    rng = np.random.default_rng(3)  # the service's draws for seed 3: a component uniform, then the noise
    u = rng.random(9, dtype=np.float32)
    noise = rng.standard_normal((9, 8), dtype=np.float32) * np.float32(0.5)
    with torch.no_grad():
        z = mixture_sample(torch.from_numpy(u), torch.from_numpy(noise), *vamp_model.prior_components())
    np.testing.assert_allclose(body["latents"], z.numpy(), atol=1e-5)
    np.testing.assert_allclose(body["samples"], vamp_model.generate(z).numpy(), atol=1e-5)
    assert post(vamp_server, "/sample", {"n": 9, "seed": 3, "temperature": 0.5}).json() == body
    assert post(vamp_server, "/sample", {"n": 9, "seed": 4}).json()["latents"] != body["latents"]


def test_encode_is_the_posterior_mean_as_before(vamp_server: ServerProcess, vamp_model, test_images) -> None:  # type: ignore[no-untyped-def]
    body = post(vamp_server, "/encode", {"inputs": test_images[:3].tolist()}).json()
    with torch.no_grad():
        mu, log_var = vamp_model.encoder(torch.from_numpy(test_images[:3]))
    np.testing.assert_allclose(body["mu"], mu.numpy(), atol=1e-5)


def test_artifacts_exported_before_priors_existed_still_serve(artifacts_dir: Path, tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    old = tmp_path / "old"
    shutil.copytree(artifacts_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("prior")
    manifest["config"] = {k: v for k, v in manifest["config"].items() if k not in ("prior", "pseudo_inputs")}
    (old / "manifest.json").write_text(json.dumps(manifest))  # the graph files, and so their sha256, unchanged
    server = start_server(old, tmp_path / "logs")
    try:
        body = post(server, "/sample", {"n": 2, "seed": 1}).json()
        z = np.random.default_rng(1).standard_normal((2, 8), dtype=np.float32)
        np.testing.assert_allclose(body["latents"], z, atol=1e-6)
        np.testing.assert_allclose(body["samples"], tiny_model.generate(torch.from_numpy(z)).numpy(), atol=1e-5)
    finally:
        server.stop()
