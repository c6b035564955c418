"""The VAE math: closed-form terms against Monte Carlo and torch.distributions, bounds, free bits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import VAEConfig
from model.latent import interpolate, traverse
from model.losses import (
    bernoulli_log_prob,
    free_bits_kl,
    gaussian_log_prob,
    iwae_bound,
    kl_per_dim,
    knn_distance,
    log_normal_diag,
)
from model.vae import VAE


def test_closed_form_kl_equals_monte_carlo_estimate() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    log_var = torch.tensor([[0.0, -1.5, 0.7]], dtype=torch.float64)
    z = mu + torch.exp(0.5 * log_var) * torch.randn(400_000, 3, generator=gen, dtype=torch.float64)
    mc = (log_normal_diag(z, mu, log_var) - log_normal_diag(z, torch.zeros_like(z), torch.zeros_like(z))).mean()
    assert kl_per_dim(mu, log_var).sum().item() == pytest.approx(mc.item(), abs=0.01)


def test_gaussian_log_prob_is_a_true_log_density() -> None:
    x, mean, log_var = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 7)
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(mean, log_var, x), expected)


def test_bernoulli_log_prob_is_stable_negative_bce_with_logits() -> None:
    logits = torch.tensor([-200.0, -3.0, 0.0, 3.0, 200.0])
    x = torch.tensor([1.0, 0.0, 0.3, 1.0, 0.0])
    got = bernoulli_log_prob(logits, x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, -F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def _tiny_vae(likelihood: str = "bernoulli") -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(input_shape=(12,), hidden_sizes=(16,), latent_dim=3, likelihood=likelihood)).double()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iwae_bound_is_above_elbo_and_grows_with_k(likelihood: str) -> None:
    vae = _tiny_vae(likelihood)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 12, generator=gen, dtype=torch.float64)
    bounds = {}
    with torch.no_grad():
        for k in (1, 10, 200):
            eps = torch.randn(64, k, 3, generator=gen, dtype=torch.float64)
            terms = vae.monte_carlo_terms(x, eps)
            elbo = terms.log_px_features.sum(-1).mean(1) - terms.kl_dims.sum(-1)
            bounds[k] = iwae_bound(terms.log_weights).mean().item()
            if k == 1:
                bounds["elbo"] = elbo.mean().item()
    assert bounds[1] == pytest.approx(bounds["elbo"], abs=0.5)  # K=1 IWAE is a (noisier) ELBO estimate
    assert bounds[200] > bounds[10] > bounds[1]


def test_iwae_bound_with_one_sample_equals_the_single_sample_elbo() -> None:
    log_weights = torch.tensor([[-3.0], [-5.0]])
    torch.testing.assert_close(iwae_bound(log_weights), torch.tensor([-3.0, -5.0]))
    two = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(iwae_bound(two), torch.tensor([math.log(2.0)]))


def test_knn_distance_is_the_mean_distance_to_the_k_nearest_bank_rows() -> None:
    rng = np.random.default_rng(0)
    # Offset far from the origin: |a|^2 + |b|^2 - 2ab alone would lose the distances to cancellation.
    bank = rng.normal(size=(300, 24)).astype(np.float32) + 40.0
    queries = np.concatenate([rng.normal(size=(6, 24)).astype(np.float32) + 40.0, bank[:2] + 1e-3])
    distances = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    for k in (1, 5):
        expected = np.sort(distances, axis=1)[:, :k].mean(1)
        got = knn_distance(torch.from_numpy(queries), torch.from_numpy(bank), k)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    # k above the bank's size uses the whole bank.
    np.testing.assert_allclose(knn_distance(torch.from_numpy(queries), torch.from_numpy(bank[:3]), 5).numpy(),
                               distances[:, :3].mean(1), rtol=1e-9)


def test_free_bits_stops_the_kl_gradient_of_dimensions_below_the_floor() -> None:
    mu = torch.tensor([[0.01, 2.0], [0.02, 2.0]], requires_grad=True)
    log_var = torch.zeros(2, 2, requires_grad=True)
    free_bits_kl(kl_per_dim(mu, log_var).mean(0), free_bits=0.5).backward()
    assert mu.grad is not None
    assert torch.all(mu.grad[:, 0] == 0), "dimension 0 (KL << 0.5) must get no gradient"
    assert torch.all(mu.grad[:, 1] != 0), "dimension 1 (KL = 2) keeps its gradient"


def test_beta_scales_the_kl_gradient() -> None:
    mu = torch.tensor([[1.0, -1.0]], requires_grad=True)
    grads = []
    for beta in (1.0, 4.0):
        mu.grad = None
        (beta * free_bits_kl(kl_per_dim(mu, torch.zeros(1, 2)).mean(0), 0.0)).backward()
        grads.append(mu.grad.clone())
    torch.testing.assert_close(grads[1], 4.0 * grads[0])


def test_interpolation_hits_both_ends_and_slerp_keeps_the_norm_of_equal_norm_ends() -> None:
    a, b = np.array([3.0, 0.0], dtype=np.float32), np.array([0.0, 3.0], dtype=np.float32)
    for method in ("linear", "slerp"):
        path = interpolate(a, b, steps=5, method=method)
        np.testing.assert_allclose(path[0], a, atol=1e-6)
        np.testing.assert_allclose(path[-1], b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(interpolate(a, b, steps=7, method="slerp"), axis=1), 3.0, rtol=1e-5)
    assert np.linalg.norm(interpolate(a, b, steps=3, method="linear")[1]) < 3.0
    with pytest.raises(ValueError, match="steps"):
        interpolate(a, b, steps=1)


def test_traversal_changes_one_dimension_per_block() -> None:
    z = np.zeros(4, dtype=np.float32)
    grid = traverse(z, dims=[1, 3], values=np.array([-1.0, 1.0]))
    assert grid.shape == (4, 4)
    np.testing.assert_array_equal(grid[:, [0, 2]], 0)
    np.testing.assert_array_equal(grid[:2, 1], [-1, 1])
    np.testing.assert_array_equal(grid[2:, 3], [-1, 1])


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    config = VAEConfig(input_shape=(30,), hidden_sizes=(64, 32), latent_dim=5, likelihood="gaussian")
    assert VAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        VAEConfig.from_dict({**config.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="latent_dim"):
        VAEConfig(latent_dim=0)
