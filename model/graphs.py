"""The graphs the service runs, as nn.Modules to export: encoder, decoder and the scorers.

Preprocessing (standardization of tabular features) is baked in, so the service feeds raw
features and never re-implements any math. No graph draws random numbers: Monte Carlo noise is
an input, so every served answer is reproducible from its seed.
"""

from __future__ import annotations

import torch
from torch import nn

from model.losses import iwae_bound, knn_distance, mahalanobis_sq
from model.prior import mixture_sample
from model.vae import VAE, MonteCarloTerms, feature_width


class Standardize(nn.Module):
    """x -> (x - mean) / std, and back; identity when no statistics are given."""

    mean: torch.Tensor
    std: torch.Tensor

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


class PriorComponents(nn.Module):
    """The VampPrior's components (mu_n, log_var_n) (N, D), computed once at export: the pseudo-inputs
    are fixed after training, and encoding all N of them on every request would cost N encoder
    passes (500 at the default, 30x a one-item K=16 score)."""

    mu: torch.Tensor
    log_var: torch.Tensor

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        with torch.no_grad():
            mu, log_var = vae.prior_components()
        self.register_buffer("mu", mu.detach().clone())
        self.register_buffer("log_var", log_var.detach().clone())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu, self.log_var


class PriorSampleGraph(nn.Module):
    """u (B,) uniform in [0, 1), noise (B, D) ~ N(0, I) -> z (B, D) from the VampPrior mixture and its
    E[x|z] (B, F) in raw feature units. Both noises are inputs: the service's seeded generator draws them."""

    def __init__(self, decoder: DecoderGraph, components: PriorComponents) -> None:
        super().__init__()
        self.decoder, self.components = decoder, components

    def forward(self, u: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = mixture_sample(u, noise, *self.components())  # (B, D)
        return z, self.decoder(z)


NEIGHBORS = 5  # k of the neighbour score


class NormalReference(nn.Module):
    """Normal data, for the scores that compare an input with it: mean and precision of E_q[z|x];
    a bank of encoder features of normal training items (centred, scaled per feature, in their top
    principal components) for the k-nearest-neighbour distance; and the (location, scale) of the
    -ELBO, latent and neighbour scores on held-out normal data, to put them on one scale. Neutral
    values when unknown."""

    mean: torch.Tensor
    precision: torch.Tensor
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    feature_projection: torch.Tensor
    feature_bank: torch.Tensor
    elbo_scale: torch.Tensor
    latent_scale: torch.Tensor
    knn_scale: torch.Tensor

    def __init__(self, latent_dim: int, feature_dim: int, stats: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        stats = stats or {}
        self.register_buffer("mean", stats.get("mean", torch.zeros(latent_dim)).double())
        self.register_buffer("precision", stats.get("precision", torch.eye(latent_dim)).double())
        self.register_buffer("feature_mean", stats.get("feature_mean", torch.zeros(feature_dim)).float())
        self.register_buffer("feature_std", stats.get("feature_std", torch.ones(feature_dim)).float())
        self.register_buffer("feature_projection", stats.get("feature_projection", torch.eye(feature_dim)).float())
        self.register_buffer("feature_bank", stats.get("feature_bank", torch.zeros(1, feature_dim)).float())
        for name in ("elbo_scale", "latent_scale", "knn_scale"):
            self.register_buffer(name, stats.get(name, torch.tensor([0.0, 1.0])).double())

    def bank_coordinates(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features as the bank holds them: centred, divided by their normal-data spread, and
        projected on the principal components (few: the bank is read whole for every batch)."""
        return ((features - self.feature_mean) / self.feature_std) @ self.feature_projection

    @staticmethod
    def standardized(score: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (score - scale[0]) / scale[1]


class ScoreGraph(nn.Module):
    """x (B, F) raw, eps (B, K, D) ~ N(0, I) -> the anomaly-score parts, all in nats (float64).

    reconstruction_nll = -(1/K) sum_k log p(x|z_k)         (B,)
    kl                 = KL(q(z|x) || p(z)), closed form    (B,)   (VampPrior: (1/K) sum_k log q(z_k|x) - log p(z_k))
    elbo_score         = reconstruction_nll + kl = -ELBO    (B,)
    iwae_score         = -log (1/K) sum_k w_k >= -log p(x)  (B,)   (Burda et al. 2015)
    latent_score       = Mahalanobis^2 of mu(x) from normal data's latent means (B,)
    elbo_latent_score  = standardized elbo_score + standardized latent_score (B,)
    knn_score          = mean distance of the encoder features to the k nearest normal items (B,)
    elbo_knn_score     = standardized elbo_score + standardized knn_score (B,)
    feature_nll        = -(1/K) sum_k log p(x_f|z_k)        (B, F) sums to reconstruction_nll
    mu                 = the posterior mean, float32         (B, D) for the service's drift windows
    """

    def __init__(self, vae: VAE, standardize: Standardize, reference: NormalReference, *,
                 neighbours: bool = True, components: PriorComponents | None = None) -> None:
        super().__init__()
        self.vae, self.standardize, self.reference = vae, standardize, reference
        # False: leave out knn_score and elbo_knn_score, and with them the read of the whole bank.
        self.neighbours = neighbours
        self.components = components  # the VampPrior's, precomputed; None for the standard prior

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        components = self.components() if self.components is not None else None
        terms = self.vae.monte_carlo_terms(self.standardize(x), eps, reduce_dtype=torch.float64, components=components)
        return score_terms(terms, self.reference, neighbours=self.neighbours)


def score_terms(terms: MonteCarloTerms, ref: NormalReference, *, neighbours: bool) -> tuple[torch.Tensor, ...]:
    """The scorer's outputs (ScoreGraph's docstring; GRAPH_IO's order) from the Monte Carlo terms; without
    the neighbour scores unless `neighbours` (a Python flag, fixed when a graph is traced)."""
    feature_nll = -terms.log_px_features.mean(1)  # (B, F)
    reconstruction_nll = feature_nll.sum(-1)  # (B,)
    kl = terms.kl  # (B,)
    elbo_score = reconstruction_nll + kl
    iwae_score = -iwae_bound(terms.log_weights)  # (B,)
    latent_score = mahalanobis_sq(terms.mu, ref.mean, ref.precision)  # (B,)
    standard_elbo = ref.standardized(elbo_score, ref.elbo_scale)
    elbo_latent_score = standard_elbo + ref.standardized(latent_score, ref.latent_scale)
    scores = (reconstruction_nll, kl, elbo_score, iwae_score, latent_score, elbo_latent_score)
    mu = terms.mu.float()  # (B, D): what /encode returns, so drift sees the same means for both
    if not neighbours:
        return (*scores, feature_nll, mu)
    knn_score = knn_distance(ref.bank_coordinates(terms.features), ref.feature_bank, NEIGHBORS)
    elbo_knn_score = standard_elbo + ref.standardized(knn_score, ref.knn_scale)
    return (*scores, knn_score, elbo_knn_score, feature_nll, mu)


def build_graphs(vae: VAE, mean: torch.Tensor | None, std: torch.Tensor | None,
                 normal_reference: dict[str, torch.Tensor] | None = None) -> dict[str, nn.Module]:
    """The exportable graphs (GRAPH_IO's; sampler only with a VampPrior) sharing one set of weights, in eval mode."""
    standardize = Standardize(mean, std, vae.config.input_dim)
    reference = NormalReference(vae.config.latent_dim, feature_width(vae.config), normal_reference)
    components = PriorComponents(vae) if vae.prior is not None else None
    decoder = DecoderGraph(vae, standardize)
    graphs: dict[str, nn.Module] = {
        "encoder": EncoderGraph(vae, standardize),
        "decoder": decoder,
        "scorer": ScoreGraph(vae, standardize, reference, components=components),
        "scorer_core": ScoreGraph(vae, standardize, reference, neighbours=False, components=components),
    }
    if components is not None:
        graphs["sampler"] = PriorSampleGraph(decoder, components)
    for graph in graphs.values():
        graph.eval()
    return graphs
