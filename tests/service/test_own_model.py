"""Models of your own, served (issue 29): the tutorial's VAE, written and trained as the tutorial does,
and a conv VAE in another style, exported with `vaeserve.export_model` and served by real servers
whose every answer equals the user's own PyTorch module: alone, and in a repository beside a
vaeserve-trained model with a canary between two versions."""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import tritonclient.http as triton
from torch.utils.data import DataLoader, TensorDataset

import vaeserve
from harness.servers import ServerProcess, start_server

# ── The tutorial's VAE, as /work/shared/reference/vae-tutorial.txt writes it ─────────────────────────


class Encoder(nn.Module):
    """Inference network: q_phi(z|x) = N(mu, diag(sigma^2))."""

    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.shared = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
        )
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_log_var = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x):  # type: ignore[no-untyped-def]
        h = self.shared(x)
        mu = self.fc_mu(h)
        log_var = self.fc_log_var(h)
        return mu, log_var


class Decoder(nn.Module):
    """Generative network: p_theta(x|z) = Bernoulli(g_theta(z))."""

    def __init__(self, latent_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, output_dim),
            nn.Sigmoid(),  # output in [0,1] for Bernoulli
        )

    def forward(self, z):  # type: ignore[no-untyped-def]
        return self.net(z)


class VAE(nn.Module):
    """Variational Autoencoder (Kingma & Welling 2013)."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 512, latent_dim: int = 20):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = Encoder(input_dim, hidden_dim, latent_dim)
        self.decoder = Decoder(latent_dim, hidden_dim, input_dim)

    def reparameterize(self, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        if self.training:
            std = (0.5 * log_var).exp()
            eps = torch.randn_like(std)
            return mu + std * eps
        return mu

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        mu, log_var = self.encoder(x)
        z = self.reparameterize(mu, log_var)
        x_recon = self.decoder(z)
        return x_recon, mu, log_var

    def elbo_loss(self, x, x_recon, mu, log_var, beta=1.0):  # type: ignore[no-untyped-def]
        batch_size = x.size(0)
        recon_loss = F.binary_cross_entropy(x_recon, x, reduction="sum") / batch_size
        kl_loss = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum() / batch_size
        total_loss = recon_loss + beta * kl_loss
        return {"loss": total_loss, "recon_loss": recon_loss.item(), "kl_loss": kl_loss.item()}

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.eval()
        with torch.no_grad():
            mu, log_var = self.encoder(x)
            return self.decoder(mu)


def train_tutorial_vae(model: VAE, train_x: np.ndarray, *, max_steps: int, seed: int = 0) -> VAE:
    """The tutorial's own training loop (train_vae), on Fashion-MNIST instead of MNIST."""
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(torch.from_numpy(train_x)), batch_size=128, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step, (x,) in enumerate(loader):
        if step == max_steps:
            break
        x = x.view(-1, 784)
        optimizer.zero_grad()
        x_recon, mu, log_var = model(x)
        losses = model.elbo_loss(x, x_recon, mu, log_var)
        losses["loss"].backward()
        optimizer.step()
    return model.eval()


# ── A conv VAE in another style (PyTorch-VAE's BaseVAE): lists, (3, 32, 32), Gaussian of fixed variance ─

SIGMA = 0.1  # the decoder's fixed standard deviation


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 8) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.LeakyReLU(),
                                     nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.LeakyReLU())
        self.fc_mu = nn.Linear(32 * 8 * 8, latent_dim)
        self.fc_var = nn.Linear(32 * 8 * 8, latent_dim)
        self.decoder_input = nn.Linear(latent_dim, 32 * 8 * 8)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.LeakyReLU(),
                                     nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1))
        self.final_layer = nn.Sigmoid()

    def encode(self, input: torch.Tensor) -> list[torch.Tensor]:
        result = torch.flatten(self.encoder(input), start_dim=1)
        return [self.fc_mu(result), self.fc_var(result)]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        result = self.decoder_input(z).view(-1, 32, 8, 8)
        return self.final_layer(self.decoder(result))

    def forward(self, input: torch.Tensor) -> list[torch.Tensor]:
        mu, log_var = self.encode(input)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return [self.decode(z), input, mu, log_var]

    def loss_function(self, recons: torch.Tensor, input: torch.Tensor, mu: torch.Tensor,
                      log_var: torch.Tensor) -> torch.Tensor:
        recons_loss = F.mse_loss(recons, input, reduction="sum") / (2 * SIGMA**2)
        kld_loss = torch.sum(-0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1))
        return (recons_loss + kld_loss) / len(input)


def colour_images(x: np.ndarray, *, seed: int) -> np.ndarray:
    """Fashion-MNIST items as (n, 3, 32, 32) colour images: padded to 32x32 and tinted at random."""
    tint = np.random.default_rng(seed).uniform(0.4, 1.0, size=(len(x), 3, 1, 1)).astype(np.float32)
    return np.pad(x.reshape(-1, 1, 28, 28), ((0, 0), (0, 0), (2, 2), (2, 2))) * tint


# ── Fixtures ───────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def fashion():  # type: ignore[no-untyped-def]
    from training.data import load_fashion_mnist

    return load_fashion_mnist()


@pytest.fixture(scope="module")
def tutorial(fashion) -> VAE:  # type: ignore[no-untyped-def]
    return train_tutorial_vae(VAE(), fashion.train_x, max_steps=300)


@pytest.fixture(scope="module")
def tutorial_server(tutorial: VAE, fashion, tmp_path_factory: pytest.TempPathFactory  # type: ignore[no-untyped-def]
                    ) -> Iterator[ServerProcess]:
    out = tmp_path_factory.mktemp("own") / "tutorial"
    vaeserve.export_model(tutorial, out=out, name="tutorial-vae", input_shape=(1, 28, 28), likelihood="bernoulli",
                          decoder_output="probs", calibration=fashion.val_x[:2000])
    proc = start_server(out, tmp_path_factory.mktemp("own-logs"), batch_wait_timeout_s=0.002)
    yield proc
    proc.stop()


def tutorial_neg_elbo(model: VAE, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """-ELBO with the given noise, straight from the module: -(1/K) sum_k log p(x|z_k) + KL, the Bernoulli
    log-likelihood from the logits before the decoder's Sigmoid (what its probabilities are made of)."""
    with torch.no_grad():
        xt, e = torch.from_numpy(x).double(), torch.from_numpy(eps)
        mu, log_var = model.encoder(torch.from_numpy(x))
        z = mu[:, None] + torch.exp(0.5 * log_var)[:, None] * e  # (B, K, D)
        logits = model.decoder.net[:-1](z).double()  # (B, K, 784)
        log_px = -F.binary_cross_entropy_with_logits(logits, xt[:, None].expand_as(logits), reduction="none").sum(-1)
        kl = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).double().sum(-1)
    return (-log_px.mean(1) + kl).numpy()


# ── 1. The tutorial's VAE, served alone ──────────────────────────────────────────────────────────────


def test_reconstruct_and_encode_equal_the_tutorial_module(tutorial_server: ServerProcess, tutorial: VAE,
                                                          fashion) -> None:  # type: ignore[no-untyped-def]
    x = fashion.test_x[:8]
    reconstructed = httpx.post(tutorial_server.url + "/reconstruct", json={"inputs": x.tolist()}).json()
    encoded = httpx.post(tutorial_server.url + "/encode", json={"inputs": x.tolist()}).json()
    with torch.no_grad():
        mu, log_var = tutorial.encoder(torch.from_numpy(x))
    np.testing.assert_allclose(reconstructed["reconstructions"], tutorial.reconstruct(torch.from_numpy(x)).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(encoded["mu"], mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(encoded["log_var"], log_var.numpy(), atol=1e-5)
    assert reconstructed["model"] == {"name": "tutorial-vae", "version": reconstructed["model"]["version"]}


def test_anomaly_score_is_the_estimator_computed_on_the_module(tutorial_server: ServerProcess, tutorial: VAE,
                                                               fashion) -> None:  # type: ignore[no-untyped-def]
    x, k, seed = fashion.test_x[:6], 8, 3
    body = httpx.post(tutorial_server.url + "/anomaly-score", json={"inputs": x.tolist(), "mc_samples": k,
                                                                   "seed": seed}).json()
    eps = np.random.default_rng(seed).standard_normal((len(x), k, 20), dtype=np.float32)  # service/core/noise.py
    scores = np.array([r["score"] for r in body["results"]])
    np.testing.assert_allclose(scores, tutorial_neg_elbo(tutorial, x, eps), rtol=1e-6)
    # The tutorial's own loss (BCE on its Sigmoid's probabilities) is the same -ELBO, but for float32 rounding.
    with torch.no_grad():
        mu, log_var = tutorial.encoder(torch.from_numpy(x))
        z = mu[:, None] + torch.exp(0.5 * log_var)[:, None] * torch.from_numpy(eps)
        probs = tutorial.decoder(z)
        bce = F.binary_cross_entropy(probs, torch.from_numpy(x)[:, None].expand_as(probs), reduction="none")
        own_loss = (bce.sum(-1).mean(1) - 0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(-1)).numpy()
    np.testing.assert_allclose(scores, own_loss, rtol=1e-3)
    assert body["score_variant"] == "elbo" and all(0 <= r["p_value"] <= 1 for r in body["results"])


def test_sample_and_interpolate_decode_with_the_module(tutorial_server: ServerProcess, tutorial: VAE) -> None:
    body = httpx.post(tutorial_server.url + "/sample", json={"n": 4, "seed": 7, "temperature": 1.0}).json()
    z = np.random.default_rng(7).standard_normal((4, 20), dtype=np.float32)  # N(0, I): the standard prior
    np.testing.assert_allclose(body["latents"], z, rtol=1e-6)  # the same draws (JSON rounds float32 a little)
    path = httpx.post(tutorial_server.url + "/interpolate", json={"z_start": z[0].tolist(), "z_end": z[1].tolist(),
                                                                  "steps": 3}).json()
    with torch.no_grad():
        np.testing.assert_allclose(body["samples"], tutorial.decoder(torch.from_numpy(z)).numpy(), atol=1e-5)
        latents = torch.tensor(path["latents"], dtype=torch.float32)
        np.testing.assert_allclose(path["outputs"], tutorial.decoder(latents).numpy(), atol=1e-5)


def test_tritonclient_runs_the_tutorial_encoder_over_v2(tutorial_server: ServerProcess, tutorial: VAE,
                                                        fashion) -> None:  # type: ignore[no-untyped-def]
    x = fashion.test_x[:3]
    client = triton.InferenceServerClient(url=tutorial_server.url.removeprefix("http://"))
    infer_input = triton.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer("encoder", inputs=[infer_input], outputs=[triton.InferRequestedOutput("mu")])
    with torch.no_grad():
        np.testing.assert_allclose(result.as_numpy("mu"), tutorial.encoder(torch.from_numpy(x))[0].numpy(), atol=1e-5)


# ── 2 and 4. A repository: the tutorial's VAE (two versions, a canary), a vaeserve model, a conv VAE ──


@pytest.fixture(scope="module")
def models(tutorial: VAE, fashion) -> dict[str, nn.Module]:  # type: ignore[no-untyped-def]
    """Version 2 of the tutorial's model trains 100 steps more; the conv VAE 150 steps on colour images."""
    torch.manual_seed(0)
    conv = ConvVAE()
    images = colour_images(fashion.train_x[:150 * 64], seed=0)
    optimizer = torch.optim.Adam(conv.parameters(), lr=2e-3)
    for start in range(0, len(images), 64):
        batch = torch.from_numpy(images[start:start + 64])
        optimizer.zero_grad()
        conv.loss_function(*conv(batch)).backward()
        optimizer.step()
    later = train_tutorial_vae(copy.deepcopy(tutorial), fashion.train_x[-20000:], max_steps=100, seed=1)
    return {"1": tutorial, "2": later, "conv": conv.eval()}


@pytest.fixture(scope="module")
def repository(models: dict[str, nn.Module], artifacts_dir: Path, fashion,  # type: ignore[no-untyped-def]
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own-repository")
    shutil.copytree(artifacts_dir, root / "tiny-vae" / "1")  # trained by `vaeserve train` (tests/conftest.py)
    for version in ("1", "2"):
        manifest = vaeserve.export_model(models[version], repository=root, name="tutorial-vae", input_shape=(1, 28, 28),
                                         likelihood="bernoulli", decoder_output="probs", calibration=fashion.val_x[:2000])
        assert manifest["model"]["version"] == version  # the next integer version of the repository
    (root / "tutorial-vae" / "policy.json").write_text(json.dumps({"canary": {"1": 0.5}}))
    vaeserve.export_model(models["conv"], repository=root, name="conv-vae", input_shape=(3, 32, 32),
                          likelihood="gaussian", decoder_output="mean", gaussian_log_var=2 * math.log(SIGMA),
                          calibration=colour_images(fashion.val_x[:1000], seed=1))
    return root


@pytest.fixture(scope="module")
def repo_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(repository, tmp_path_factory.mktemp("own-repo-logs"), model_repository=repository)
    yield proc
    proc.stop()


def conv_neg_elbo(model: nn.Module, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """-ELBO of the conv VAE with the given noise: Gaussian log-likelihood of fixed variance, closed-form KL."""
    with torch.no_grad():
        mu, log_var = model.encode(torch.from_numpy(x).view(-1, 3, 32, 32))
        z = mu[:, None] + torch.exp(0.5 * log_var)[:, None] * torch.from_numpy(eps)  # (B, K, D)
        mean = model.decode(z.reshape(-1, z.shape[-1])).reshape(len(x), eps.shape[1], -1).double()
        log_px = torch.distributions.Normal(mean, SIGMA).log_prob(torch.from_numpy(x).double()[:, None]).sum(-1)
        kl = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).double().sum(-1)
    return (-log_px.mean(1) + kl).numpy()


def test_conv_vae_serves_and_scores_within_parity(repo_server: ServerProcess, models: dict[str, nn.Module],
                                                  fashion) -> None:  # type: ignore[no-untyped-def]
    conv, x = models["conv"], colour_images(fashion.test_x[:5], seed=2).reshape(5, -1)  # flat lists of 3,072
    url = repo_server.url + "/models/conv-vae"
    buffer = io.BytesIO()
    np.save(buffer, x)
    scored = httpx.post(url + "/anomaly-score?mc_samples=8&seed=4", content=buffer.getvalue(),
                        headers={"content-type": "application/x-npy"}, timeout=60)
    assert scored.status_code == 200, scored.text
    eps = np.random.default_rng(4).standard_normal((5, 8, 8), dtype=np.float32)
    np.testing.assert_allclose([r["score"] for r in scored.json()["results"]], conv_neg_elbo(conv, x, eps), rtol=1e-6)
    reconstructed = httpx.post(url + "/reconstruct", json={"inputs": x.tolist()}, timeout=60).json()
    with torch.no_grad():
        want = conv.decode(conv.encode(torch.from_numpy(x).view(-1, 3, 32, 32))[0]).reshape(5, -1).numpy()
    np.testing.assert_allclose(reconstructed["reconstructions"], want, atol=1e-5)
    card = httpx.get(url).json()
    assert card["input"]["shape"] == [3, 32, 32] and card["likelihood"] == "gaussian"
    assert sorted(card["score_variants"]) == ["elbo", "elbo_latent", "iwae"]
    knn = httpx.post(url + "/anomaly-score", json={"inputs": x[:1].tolist(), "score": "elbo_knn"})
    assert knn.status_code == 422 and "no calibration for variant 'elbo_knn'" in knn.json()["error"]


def test_repository_serves_both_kinds_with_a_canary(repo_server: ServerProcess, models: dict[str, nn.Module],
                                                    fashion) -> None:  # type: ignore[no-untyped-def]
    url, x = repo_server.url, fashion.test_x[:4]
    listing = {m["name"]: m for m in httpx.get(url + "/models").json()["models"]}
    assert set(listing) == {"tiny-vae", "tutorial-vae", "conv-vae"}
    assert {v["version"]: v["traffic"] for v in listing["tutorial-vae"]["versions"]} == {"1": 0.5, "2": 0.5}
    seen = set()
    for _ in range(40):
        answer = httpx.post(url + "/models/tutorial-vae/reconstruct", json={"inputs": x.tolist()}).json()
        version = answer["model"]["version"]
        seen.add(version)
        want = models[version].reconstruct(torch.from_numpy(x)).numpy()  # type: ignore[operator]
        np.testing.assert_allclose(answer["reconstructions"], want, atol=1e-5, err_msg=f"version {version}")
    assert seen == {"1", "2"}
    theirs = httpx.post(url + "/models/tiny-vae/anomaly-score", json={"inputs": x.tolist(), "seed": 0})
    assert theirs.status_code == 200 and theirs.json()["model"] == {"name": "tiny-vae", "version": "1"}
    ours, own = httpx.get(url + "/models/tiny-vae").json(), httpx.get(url + "/models/tutorial-vae").json()
    assert set(own) == set(ours)  # the same card: nothing tells the two kinds apart but the figures
