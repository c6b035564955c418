"""The networks: a Gaussian encoder q(z|x) and a decoder p(x|z), rebuilt from VAEConfig: MLPs, or
(architecture "conv", images only) a small conv stack before the dense layers and its mirror after."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from model.config import VAEConfig
from model.losses import (
    bernoulli_log_prob,
    gaussian_log_prob,
    iwae_log_weights,
    kl_per_dim,
    log_normal_diag,
    log_normal_mixture,
    reparameterize,
)
from model.prior import VampPrior
from model.table_likelihood import table_log_prob, table_mean


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# Channels of the two stride-2 convolutions (28x28 -> 14x14 -> 7x7 for Fashion-MNIST).
CONV_CHANNELS = (32, 64)


def conv_sizes(size: int) -> tuple[int, int]:
    """A side after the first and the second 4x4 stride-2 convolution (padding 1): each halves, rounding down."""
    return size // 2, size // 4


def conv_width(config: VAEConfig) -> int:
    """Features of the flattened conv feature map: the dense layers' input (encoder), output (decoder)."""
    _, height, width = config.input_shape
    return CONV_CHANNELS[-1] * conv_sizes(height)[1] * conv_sizes(width)[1]


def feature_width(config: VAEConfig) -> int:
    """Width H of the encoder's last hidden layer (Encoder.features)."""
    if config.hidden_sizes:
        return config.hidden_sizes[-1]
    return conv_width(config) if config.architecture == "conv" else config.input_dim


def conv_stem(config: VAEConfig) -> nn.Sequential:
    """(B, F) -> (B, C, H, W) -> two 4x4 stride-2 convolutions -> (B, conv_width)."""
    c_in, c1, c2 = config.input_shape[0], *CONV_CHANNELS
    return nn.Sequential(
        nn.Unflatten(1, config.input_shape),
        nn.Conv2d(c_in, c1, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(1),
    )


def deconv_head(config: VAEConfig) -> nn.Sequential:
    """The stem's mirror: (N, conv_width) -> two 4x4 stride-2 transposed convolutions -> (N, F).

    Kernel 4, stride 2, padding 1 exactly doubles a side; output_padding adds the pixel that the
    stem's halving dropped from an odd side, so any H and W come back (multiples of 4 need none).
    """
    c_out, c1, c2 = config.input_shape[0], *CONV_CHANNELS
    _, height, width = config.input_shape
    (h1, h2), (w1, w2) = conv_sizes(height), conv_sizes(width)
    return nn.Sequential(
        nn.ReLU(),  # after the last dense layer, which mlp() leaves linear
        nn.Unflatten(1, (c2, h2, w2)),
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1, output_padding=(h1 % 2, w1 % 2)), nn.ReLU(),
        nn.ConvTranspose2d(c1, c_out, 4, stride=2, padding=1, output_padding=(height % 2, width % 2)),
        nn.Flatten(1),
    )


class MonteCarloTerms(NamedTuple):
    """Everything the ELBO, the IWAE bound and explanations need, for K noise draws per example."""

    log_px_features: torch.Tensor  # (B, K, F) log p(x_f | z_k)
    kl_dims: torch.Tensor  # (B, D) closed-form KL of q(z|x) to N(0, I) per latent dimension
    kl: torch.Tensor  # (B,) KL(q(z|x) || p(z)): kl_dims summed, or (VampPrior) mean_k log q(z_k|x) - log p(z_k)
    log_weights: torch.Tensor  # (B, K) log p(x|z_k) + log p(z_k) - log q(z_k|x)
    mu: torch.Tensor  # (B, D)
    log_var: torch.Tensor  # (B, D)
    features: torch.Tensor  # (B, H) the encoder's last hidden layer


def standard_prior_terms(log_px_features: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
                         features: torch.Tensor) -> MonteCarloTerms:
    """The terms under p(z) = N(0, I), from log p(x_f|z_k) (B, K, F) and z_k (B, K, D): closed-form KL and
    the importance weights. Shared by VAE and by a user's own model (model/adapter.py)."""
    kl_dims = kl_per_dim(mu, log_var)  # (B, D)
    log_weights = iwae_log_weights(log_px_features.sum(-1), z, mu, log_var)  # (B, K)
    return MonteCarloTerms(log_px_features, kl_dims, kl_dims.sum(-1), log_weights, mu, log_var, features)


class Encoder(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(log_var(x))))."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        conv = config.architecture == "conv"
        # Identity for mlp: no parameters, so mlp checkpoints keep their state_dict keys.
        self.stem = conv_stem(config) if conv else nn.Identity()
        sizes = [conv_width(config) if conv else config.input_dim, *config.hidden_sizes]
        self.body = nn.Sequential(mlp(sizes), nn.ReLU()) if config.hidden_sizes else nn.Identity()
        self.to_mu = nn.Linear(feature_width(config), config.latent_dim)
        self.to_log_var = nn.Linear(feature_width(config), config.latent_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (B, H): what the posterior is read from, and what neighbour-based
        anomaly scores compare."""
        return self.body(self.stem(x))

    def posterior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_mu(h), self.to_log_var(h)  # (B, D), (B, D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posterior(self.features(x))


class Decoder(nn.Module):
    """p(x|z): logits of a Bernoulli, or the mean of a Gaussian (variance learned or fixed)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        conv = config.architecture == "conv"
        self.net = mlp([config.latent_dim, *reversed(config.hidden_sizes), conv_width(config) if conv else config.input_dim])
        self.head = deconv_head(config) if conv else None
        learn_var = config.likelihood in ("gaussian", "table") and config.gaussian_variance == "learned"
        # One log-variance per feature, shared across examples: stable and enough for tabular data.
        self.log_var = nn.Parameter(
            torch.full((config.input_dim,), float(config.fixed_log_var)), requires_grad=learn_var
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> (..., F): logits (bernoulli) or mean (gaussian)."""
        if self.head is None:
            return self.net(z)
        # Convolutions take one batch axis: fold the leading axes (B, K) into it and restore them.
        params = self.head(self.net(z.reshape(-1, z.shape[-1])))  # (N, F)
        return params.reshape(*z.shape[:-1], params.shape[-1])

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per feature."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_prob(params, x)
        log_var = self.log_var.clamp(min=self.config.min_log_var)
        if self.config.likelihood == "table":
            return table_log_prob(params, x, log_var, self.config.table_blocks)
        return gaussian_log_prob(params, log_var.expand_as(params), x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z]: pixel probabilities, the Gaussian mean, or a table's per-block means."""
        if self.config.likelihood == "table":
            return table_mean(params, self.config.table_blocks)
        return torch.sigmoid(params) if self.config.likelihood == "bernoulli" else params


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling 2013) on flattened inputs (B, F)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # None for the standard prior, so its checkpoints keep their state_dict keys.
        self.prior = VampPrior(config) if config.prior == "vampprior" else None

    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The VampPrior's components: the posteriors (mu_n, log_var_n) (N, D) of the pseudo-inputs."""
        assert self.prior is not None, "prior_components needs a VampPrior model"
        return self.encoder(self.prior.pseudo_inputs())

    def log_prior(self, z: torch.Tensor, components: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """log p(z) (...) for z (..., D): N(0, I), or the VampPrior mixture (its components precomputed or not)."""
        if self.prior is None:
            return log_normal_diag(z, torch.zeros_like(z), torch.zeros_like(z))
        prior_mu, prior_log_var = components if components is not None else self.prior_components()
        return log_normal_mixture(z, prior_mu.to(z.dtype), prior_log_var.to(z.dtype))

    def monte_carlo_terms(
        self, x: torch.Tensor, eps: torch.Tensor, reduce_dtype: torch.dtype | None = None,
        components: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> MonteCarloTerms:
        """Encode x (B, F), draw z_k = mu + sigma * eps_k with eps (B, K, D), and score.

        reduce_dtype (e.g. float64) is used for the per-feature terms and their sums: a sum of 784
        float32 log-probabilities carries ~1e-4 nats of rounding, too much for parity checks.
        components: the VampPrior's (mu_n, log_var_n) when computed once outside (exported graphs,
        evaluation); None recomputes them, as training must (they depend on the weights).
        """
        features = self.encoder.features(x)  # (B, H)
        mu, log_var = self.encoder.posterior(features)  # (B, D)
        z = reparameterize(mu.unsqueeze(1), log_var.unsqueeze(1), eps)  # (B, K, D)
        log_px_features = self.decoder.log_prob(self.decoder(z), x.unsqueeze(1))  # (B, K, F)
        if reduce_dtype is not None:
            log_px_features, z = log_px_features.to(reduce_dtype), z.to(reduce_dtype)
            mu, log_var = mu.to(reduce_dtype), log_var.to(reduce_dtype)
        if self.prior is None:
            return standard_prior_terms(log_px_features, z, mu, log_var, features)
        kl_dims = kl_per_dim(mu, log_var)  # (B, D)
        dtype = reduce_dtype or torch.promote_types(z.dtype, torch.float32)  # float32 at least (bf16 autocast)
        z, mu_q, log_var_q = z.to(dtype), mu.to(dtype), log_var.to(dtype)
        # Never in bf16 (autocast): the mixture's expanded quadratic form cancels, and bf16 keeps 3 digits.
        autocast = (torch.autocast(device_type=z.device.type, enabled=False)
                    if torch.is_autocast_enabled(z.device.type) else contextlib.nullcontext())
        with autocast:
            log_pz = self.log_prior(z, components)  # (B, K)
            log_qz = log_normal_diag(z, mu_q.unsqueeze(1), log_var_q.unsqueeze(1))  # (B, K)
            log_weights = iwae_log_weights(log_px_features.sum(-1).to(dtype), z, mu_q, log_var_q, log_pz=log_pz)
        kl = (log_qz - log_pz).mean(1)  # (B,) the K-sample estimate: no closed form for a mixture
        return MonteCarloTerms(log_px_features, kl_dims, kl, log_weights, mu, log_var, features)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> MonteCarloTerms:
        return self.monte_carlo_terms(x, eps)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean: deterministic, as served."""
        mu, _ = self.encoder(x)
        return self.decoder.mean(self.decoder(mu))

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean for given latents (draw z from the prior outside, for reproducibility)."""
        return self.decoder.mean(self.decoder(z))
