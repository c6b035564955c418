"""The VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior"): p(z) = (1/N) sum_n q(z | u_n), a
mixture of the encoder's posteriors at N learned pseudo-inputs u_n. Its log density is
model.losses.log_normal_mixture; drawing from it is mixture_sample below."""

from __future__ import annotations

import torch
from torch import nn

from model.config import VAEConfig
from model.losses import reparameterize

# Images: pseudo-inputs are pixels, kept in [0, 1] by a sigmoid. Starting values are clipped to this
# margin so no logit starts at +-infinity (Adam's step does not shrink with sigmoid's slope).
PIXEL_MARGIN = 0.01
INIT_NOISE_SD = 0.05  # "random training images plus a little noise": no two components start equal


class VampPrior(nn.Module):
    """N learnable pseudo-inputs (N, F): sigmoid(raw) for images, raw (standardized features) otherwise."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.bounded = config.is_image
        self.raw = nn.Parameter(torch.zeros(config.pseudo_inputs, config.input_dim))

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.raw) if self.bounded else self.raw  # (N, F)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Start from N random rows of the (network-side) training data x (M, F), plus noise."""
        rows = torch.randint(len(x), (self.raw.shape[0],), generator=generator)
        noise = INIT_NOISE_SD * torch.randn(self.raw.shape, generator=generator)
        start = x[rows.to(x.device)].float().cpu() + noise  # (N, F)
        if self.bounded:
            start = torch.logit(start.clamp(PIXEL_MARGIN, 1.0 - PIXEL_MARGIN))
        self.raw.copy_(start.to(self.raw.device))


def mixture_sample(u: torch.Tensor, noise: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """z ~ (1/N) sum_n N(mu_n, diag(exp(log_var_n))): component n = floor(u * N) for u (B,) uniform in
    [0, 1), then z = mu_n + sigma_n * noise with noise (B, D) ~ N(0, I). Both are inputs, so the
    caller's seeded generator controls all the randomness."""
    n = mu.shape[0]
    index = (u * n).long().clamp(0, n - 1)  # (B,) truncation is floor for u >= 0
    return reparameterize(mu[index], log_var[index], noise)  # (B, D)
