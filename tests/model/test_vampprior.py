"""The VampPrior's math against torch.distributions: its log density, the K-sample KL and IWAE
weights, and draws from the mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from model.config import VAEConfig
from model.losses import log_normal_mixture
from model.prior import mixture_sample
from model.vae import VAE


def _mixture(mu: torch.Tensor, log_var: torch.Tensor) -> MixtureSameFamily:
    """The same prior, built independently of model/: equal weights over diagonal Gaussians."""
    weights = Categorical(logits=torch.zeros(len(mu), dtype=mu.dtype))
    return MixtureSameFamily(weights, Independent(Normal(mu, torch.exp(0.5 * log_var)), 1))


def _vamp_vae(pseudo_inputs: int = 6) -> VAE:
    torch.manual_seed(0)
    config = VAEConfig(input_shape=(1, 4, 4), hidden_sizes=(16,), latent_dim=3, prior="vampprior",
                       pseudo_inputs=pseudo_inputs)
    vae = VAE(config).double()
    vae.prior.initialize(torch.rand(40, 16, dtype=torch.float64), torch.Generator().manual_seed(0))  # type: ignore[union-attr]
    return vae


def test_mixture_log_density_equals_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = 2 * torch.randn(7, 3, generator=gen, dtype=torch.float64)
    log_var = torch.randn(7, 3, generator=gen, dtype=torch.float64) - 2.0  # narrow components, as trained ones are
    z = 2 * torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    expected = _mixture(mu, log_var).log_prob(z)  # (4, 5)
    torch.testing.assert_close(log_normal_mixture(z, mu, log_var), expected, rtol=0, atol=1e-10)
    # float32, where the expanded quadratic form loses digits: still far below what matters for an NLL.
    got32 = log_normal_mixture(z.float(), mu.float(), log_var.float()).double()
    assert (got32 - expected).abs().max().item() < 1e-3


def test_one_component_mixture_is_the_gaussian() -> None:
    mu, log_var = torch.tensor([[0.5, -1.0]], dtype=torch.float64), torch.tensor([[0.2, -0.3]], dtype=torch.float64)
    z = torch.randn(10, 2, dtype=torch.float64)
    expected = Independent(Normal(mu[0], torch.exp(0.5 * log_var[0])), 1).log_prob(z)
    torch.testing.assert_close(log_normal_mixture(z, mu, log_var), expected)


def test_kl_estimate_and_iwae_weights_equal_a_direct_monte_carlo_of_log_q_minus_log_p() -> None:
    vae = _vamp_vae()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 16, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 64, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        terms = vae.monte_carlo_terms(x, eps)
        # Independently: the prior from the pseudo-inputs' posteriors, q from the encoder, log-densities
        # from torch.distributions, at the same draws z = mu + sigma * eps.
        prior_mu, prior_log_var = vae.encoder(torch.sigmoid(vae.prior.raw))  # type: ignore[union-attr]
        mu, log_var = vae.encoder(x)
        q = Independent(Normal(mu.unsqueeze(1), torch.exp(0.5 * log_var.unsqueeze(1))), 1)
        z = mu.unsqueeze(1) + torch.exp(0.5 * log_var.unsqueeze(1)) * eps  # (5, 64, 3)
        log_q, log_p = q.log_prob(z), _mixture(prior_mu, prior_log_var).log_prob(z)  # (5, 64)
        log_px = torch.distributions.Bernoulli(logits=vae.decoder(z), validate_args=False).log_prob(x.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(terms.kl, (log_q - log_p).mean(1), rtol=0, atol=1e-9)
    torch.testing.assert_close(terms.log_weights, log_px + log_p - log_q, rtol=0, atol=1e-9)


def test_kl_estimate_converges_to_the_expectation_under_q() -> None:
    """Unbiased: the K-sample estimate with fresh noise approaches a long Monte Carlo run of torch.distributions."""
    vae = _vamp_vae()
    x = torch.rand(1, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        kl = vae.monte_carlo_terms(x, torch.randn(1, 20_000, 3, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(3))).kl.item()
        mu, log_var = vae.encoder(x)
        q = Independent(Normal(mu[0], torch.exp(0.5 * log_var[0])), 1)
        z = q.sample(torch.Size([200_000]))
        prior = _mixture(*vae.encoder(vae.prior.pseudo_inputs()))  # type: ignore[union-attr]
        direct = q.log_prob(z) - prior.log_prob(z)
    assert kl == pytest.approx(direct.mean().item(), abs=5 * direct.std().item() / math.sqrt(20_000))
    assert kl > 0


def test_mixture_draws_match_the_pseudo_input_posteriors() -> None:
    gen = torch.Generator().manual_seed(4)
    mu = torch.tensor([[-3.0, 0.0], [0.0, 2.0], [4.0, -1.0], [1.0, 1.0]])
    log_var = torch.tensor([[-2.0, -1.0], [0.0, -3.0], [-1.0, -1.0], [-4.0, 0.5]])
    n = 40_000
    u, noise = torch.rand(n, generator=gen), torch.randn(n, 2, generator=gen)
    z = mixture_sample(u, noise, mu, log_var)
    component = (u * 4).long()
    counts = torch.bincount(component, minlength=4).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3, f"components are drawn uniformly: {counts}"
    for c in range(4):
        chosen = z[component == c].double()
        sd = torch.exp(0.5 * log_var[c]).double()
        # Per component: the mean within 5 standard errors, the spread within 3%.
        assert torch.all((chosen.mean(0) - mu[c]).abs() < 5 * sd / math.sqrt(len(chosen))), c
        torch.testing.assert_close(chosen.std(0), sd, rtol=0.03, atol=0)
    # Together: each coordinate's distribution is the mixture's marginal (Kolmogorov-Smirnov).
    marginal = _mixture(mu[:, :1].double(), log_var[:, :1].double())
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64).unsqueeze(-1)
    cdf = np.cumsum(marginal.log_prob(grid).exp().numpy()) * (16 / 4000)
    assert stats.kstest(z[:, 0].numpy(), lambda v: np.interp(v, grid[:, 0].numpy(), cdf)).pvalue > 1e-3


def test_u_at_the_edges_picks_the_first_and_last_component() -> None:
    mu, log_var = torch.arange(3.0).unsqueeze(1), torch.zeros(3, 1)
    z = mixture_sample(torch.tensor([0.0, 0.999999]), torch.zeros(2, 1), mu, log_var)
    torch.testing.assert_close(z, torch.tensor([[0.0], [2.0]]))


def test_pseudo_inputs_start_near_training_images_and_stay_pixels() -> None:
    config = VAEConfig(input_shape=(1, 4, 4), hidden_sizes=(8,), latent_dim=2, prior="vampprior", pseudo_inputs=30)
    vae = VAE(config)
    images = (torch.rand(5, 16) > 0.5).float()  # 5 binary images: every pseudo-input starts near one of them
    vae.prior.initialize(images, torch.Generator().manual_seed(0))  # type: ignore[union-attr]
    u = vae.prior.pseudo_inputs().detach()  # type: ignore[union-attr]
    assert u.shape == (30, 16) and u.min() > 0 and u.max() < 1
    nearest = torch.cdist(u, images).min(1).values
    assert nearest.max() < 0.5, "each pseudo-input is a training image plus a little noise"
    assert len({tuple(row.tolist()) for row in u}) == 30, "no two start equal"


def test_the_standard_prior_is_the_default_and_keeps_its_state_dict() -> None:
    old = {"input_shape": [1, 28, 28], "hidden_sizes": [16], "latent_dim": 2}  # a manifest from before priors
    config = VAEConfig.from_dict(old)
    assert config.prior == "standard"
    vae = VAE(config)
    assert vae.prior is None and not any(key.startswith("prior.") for key in vae.state_dict())
    with pytest.raises(ValueError, match="prior"):
        VAEConfig(prior="exemplar")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pseudo_inputs"):
        VAEConfig(prior="vampprior", pseudo_inputs=0)
