"""The graphs the service runs, as nn.Modules to export: encoder, decoder and scorer.

Preprocessing (standardization of tabular features) is baked in, so the service feeds raw
features and never re-implements any math. No graph draws random numbers: Monte Carlo noise is
an input, so every served answer is reproducible from its seed.
"""

from __future__ import annotations

import torch
from torch import nn

from model.losses import iwae_bound
from model.vae import VAE


class Standardize(nn.Module):
    """x -> (x - mean) / std, and back; identity when no statistics are given."""

    def __init__(self, mean: torch.Tensor | None, std: torch.Tensor | None, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(n_features))
        self.register_buffer("std", std if std is not None else torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class EncoderGraph(nn.Module):
    """x (B, F) raw -> mu (B, D), log_var (B, D)."""

    def __init__(self, vae: VAE, standardize: Standardize) -> None:
        super().__init__()
        self.vae, self.standardize = vae, standardize

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encoder(self.standardize(x))


class DecoderGraph(nn.Module):
    """z (B, D) -> E[x|z] (B, F) in raw feature units."""

    def __init__(self, vae: VAE, standardize: Standardize) -> None:
        super().__init__()
        self.vae, self.standardize = vae, standardize

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.standardize.inverse(self.vae.decoder.mean(self.vae.decoder(z)))


class ScoreGraph(nn.Module):
    """x (B, F) raw, eps (B, K, D) ~ N(0, I) -> the anomaly-score parts, all in nats (float64).

    reconstruction_nll = -(1/K) sum_k log p(x|z_k)         (B,)
    kl                 = KL(q(z|x) || p(z)), closed form    (B,)
    elbo_score         = reconstruction_nll + kl = -ELBO    (B,)
    iwae_score         = -log (1/K) sum_k w_k >= -log p(x)  (B,)   (Burda et al. 2015)
    feature_nll        = -(1/K) sum_k log p(x_f|z_k)        (B, F) sums to reconstruction_nll
    """

    def __init__(self, vae: VAE, standardize: Standardize) -> None:
        super().__init__()
        self.vae, self.standardize = vae, standardize

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        terms = self.vae.monte_carlo_terms(self.standardize(x), eps, reduce_dtype=torch.float64)
        feature_nll = -terms.log_px_features.mean(1)  # (B, F)
        reconstruction_nll = feature_nll.sum(-1)  # (B,)
        kl = terms.kl_dims.sum(-1)  # (B,)
        iwae_score = -iwae_bound(terms.log_weights)  # (B,)
        return reconstruction_nll, kl, reconstruction_nll + kl, iwae_score, feature_nll


GRAPH_IO: dict[str, tuple[list[str], list[str]]] = {
    "encoder": (["x"], ["mu", "log_var"]),
    "decoder": (["z"], ["x_mean"]),
    "scorer": (["x", "eps"], ["reconstruction_nll", "kl", "elbo_score", "iwae_score", "feature_nll"]),
}


def build_graphs(vae: VAE, mean: torch.Tensor | None, std: torch.Tensor | None) -> dict[str, nn.Module]:
    """The three exportable graphs sharing one set of weights, in eval mode."""
    standardize = Standardize(mean, std, vae.config.input_dim)
    graphs: dict[str, nn.Module] = {
        "encoder": EncoderGraph(vae, standardize),
        "decoder": DecoderGraph(vae, standardize),
        "scorer": ScoreGraph(vae, standardize),
    }
    for graph in graphs.values():
        graph.eval()
    return graphs
