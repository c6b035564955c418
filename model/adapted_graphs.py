"""The graphs the service runs, built around a user's own VAE (model/adapter.py): the same inputs,
outputs and math as model/graphs.py's, so the service cannot tell the two apart.

What differs is only what the protocol cannot give: the encoder's last hidden layer. So the scorer
has no neighbour outputs (knn_score, elbo_knn_score): its outputs are scorer_core's, and it is the one
scorer graph. The prior is N(0, I): /sample decodes N(0, I) latents with the decoder graph.
"""

from __future__ import annotations

import torch
from torch import nn

from model.adapter import AdaptedVAE
from model.contract import GRAPH_IO
from model.graphs import NormalReference, score_terms

# Graph -> (inputs, outputs) of a user's model: GRAPH_IO's, with a scorer that has scorer_core's outputs.
OWN_GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": GRAPH_IO["encoder"], "decoder": GRAPH_IO["decoder"], "scorer": GRAPH_IO["scorer_core"]}


class OwnEncoderGraph(nn.Module):
    """x (B, F) -> mu (B, D), log_var (B, D)."""

    def __init__(self, vae: AdaptedVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


class OwnDecoderGraph(nn.Module):
    """z (B, D) -> E[x|z] (B, F)."""

    def __init__(self, vae: AdaptedVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.mean(self.vae.decode(z))


class OwnScoreGraph(nn.Module):
    """x (B, F), eps (B, K, D) ~ N(0, I) -> scorer_core's outputs (model/graphs.py ScoreGraph), in nats."""

    def __init__(self, vae: AdaptedVAE, reference: NormalReference) -> None:
        super().__init__()
        self.vae, self.reference = vae, reference

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        terms = self.vae.monte_carlo_terms(x, eps, reduce_dtype=torch.float64)
        return score_terms(terms, self.reference, neighbours=False)


def build_own_graphs(vae: AdaptedVAE, normal_reference: dict[str, torch.Tensor] | None = None) -> dict[str, nn.Module]:
    """OWN_GRAPH_IO's graphs around one user module, in eval mode. normal_reference: the latent mean,
    precision and score scales of normal data (NormalReference); neutral values when None."""
    latent_dim = vae.protocol.latent_dim
    reference = NormalReference(latent_dim, latent_dim, normal_reference)
    graphs: dict[str, nn.Module] = {"encoder": OwnEncoderGraph(vae), "decoder": OwnDecoderGraph(vae),
                                    "scorer": OwnScoreGraph(vae, reference)}
    for graph in graphs.values():
        graph.eval()
    return graphs
