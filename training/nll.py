"""Test NLL by the published protocol: -log p(x) of every test image, binarized once with a fixed
seed, by importance sampling with K = 5000 draws (Burda et al. 2015, "Importance Weighted
Autoencoders"), reported as the mean and its standard error over images. This is how the table we
compare with was made (Norouzi et al. 2020, "Exemplar VAE", Table 1, dynamically binarized
Fashion-MNIST: VAE 228.70, VampPrior 227.35, Exemplar VAE 226.75).

At K=5000 the decoder runs 5,000 times per image, so this is the fast path: one image's draws per
decoder pass (its 5000 x 784 logits stay in cache), the Bernoulli term for binary x fused into one
log-sigmoid pass and summed at once (no (B, K, F) array is kept), float32 throughout (bf16 moved the
figure by 0.13 nats), the VampPrior's components encoded once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from model.losses import binary_bernoulli_log_prob, iwae_bound, iwae_log_weights, reparameterize
from model.vae import VAE

log = logging.getLogger("vaeserve.evaluate")

PROTOCOL_K = 5000
BINARIZATION_SEED = 0  # training.evaluate.binarize_fixed(test_x, seed=0): the one binarized test set
NOISE_SEED = 1  # importance-sampling noise: image i's K draws are the i-th (K, D) block of this generator
DRAWS_PER_PASS = 5000  # decoder rows per pass: whole images, or blocks of one image's draws
# On a GPU one image's 5,000 draws are too small a matrix product to fill it: 16 images per pass
# (their (16, 5000, 784) logits are 250 MB in float32).
CUDA_DRAWS_PER_PASS = 16 * PROTOCOL_K


@torch.no_grad()
def importance_weighted_nll(model: VAE, x: np.ndarray, *, k: int = PROTOCOL_K, seed: int = NOISE_SEED,
                            draws_per_pass: int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Per image (float64): "nll" = -log (1/K) sum_k w_k (the IWAE estimate of -log p(x)) and
    "neg_elbo" = -(1/K) sum_k log w_k, for x (N, F) as the networks see it.

    Image i's noise is the i-th torch.randn(k, D) of a generator seeded `seed`, so the figure does not
    depend on draws_per_pass (default: DRAWS_PER_PASS, CUDA_DRAWS_PER_PASS on a GPU). progress: a log
    line at every ~10% of the images.
    """
    model.eval()
    components = model.prior_components() if model.prior is not None else None
    binary = model.config.likelihood == "bernoulli" and bool(np.isin(x, (0.0, 1.0)).all())
    gen = torch.Generator().manual_seed(seed)  # on the CPU, so a GPU gives the same draws
    device = next(model.parameters()).device
    draws_per_pass = draws_per_pass or (CUDA_DRAWS_PER_PASS if device.type == "cuda" else DRAWS_PER_PASS)
    rows = max(1, draws_per_pass // k)  # images per pass
    nll, neg_elbo = np.empty(len(x)), np.empty(len(x))
    start_s, next_report = time.perf_counter(), max(1, len(x) // 10)
    for start in range(0, len(x), rows):
        xb = torch.from_numpy(np.ascontiguousarray(x[start:start + rows])).to(device)  # (r, F)
        eps = torch.stack([torch.randn(k, model.config.latent_dim, generator=gen) for _ in range(len(xb))]).to(device)
        mu, log_var = model.encoder(xb)  # (r, D)
        blocks = [_log_weights(model, xb, eps[:, j:j + draws_per_pass], mu, log_var, components, binary=binary)
                  for j in range(0, k, draws_per_pass)]
        log_weights = torch.cat(blocks, dim=1)  # (r, K)
        nll[start:start + len(xb)] = (-iwae_bound(log_weights)).double().cpu().numpy()
        neg_elbo[start:start + len(xb)] = (-log_weights.double().mean(1)).cpu().numpy()
        done = start + len(xb)
        if progress and (done >= next_report or done == len(x)):
            next_report += max(1, len(x) // 10)
            elapsed = time.perf_counter() - start_s
            log.info("NLL (K=%d): %d/%d images (%.0f%%), %.0f s, ~%.0f s left, running mean %.2f", k, done, len(x),
                     100 * done / len(x), elapsed, elapsed * (len(x) - done) / done, nll[:done].mean())
    return {"nll": nll, "neg_elbo": neg_elbo}


def _log_weights(model: VAE, x: torch.Tensor, eps: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
                 components: tuple[torch.Tensor, torch.Tensor] | None, *, binary: bool) -> torch.Tensor:
    """log w (r, kb) for x (r, F) and a block of draws eps (r, kb, D): model.monte_carlo_terms' log_weights
    with the per-feature terms summed at once instead of kept."""
    z = reparameterize(mu.unsqueeze(1), log_var.unsqueeze(1), eps)  # (r, kb, D)
    params = model.decoder(z)  # (r, kb, F)
    if binary:
        log_px = binary_bernoulli_log_prob(params, x.unsqueeze(1)).sum(-1)  # (r, kb)
    else:
        log_px = model.decoder.log_prob(params, x.unsqueeze(1)).sum(-1)
    return iwae_log_weights(log_px, z, mu, log_var, log_pz=model.log_prior(z, components))


def protocol_report(model: VAE, test_x: np.ndarray, *, k: int, examples: int, binarized: bool,
                    binarization_seed: int = BINARIZATION_SEED, seed: int = NOISE_SEED) -> dict[str, Any]:
    """The NLL over the first `examples` test images (0: all) with its standard error, time and protocol."""
    subset = test_x[:examples] if examples > 0 else test_x
    started = time.perf_counter()
    result = importance_weighted_nll(model, subset, k=k, seed=seed, progress=True)
    seconds = time.perf_counter() - started
    nll = result["nll"]
    se = float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return {
        "iwae_nll": float(nll.mean()), "iwae_nll_se": se, "iwae_k": k, "iwae_examples": len(subset),
        "neg_elbo_on_iwae_subset": float(result["neg_elbo"].mean()), "iwae_seconds": round(seconds, 1),
        "nll_protocol": {"k": k, "images": len(subset), "of_test_images": len(test_x), "binarized": binarized,
                         "binarization_seed": binarization_seed if binarized else None, "noise_seed": seed,
                         "estimator": "IWAE, -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) (Burda et al. 2015)",
                         "standard_error": "sd over images / sqrt(images)"},
    }
