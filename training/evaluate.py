"""Evaluation: test -ELBO, importance-weighted NLL, active units, per-dimension KL, AUROC."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from model.losses import iwae_bound, kl_per_dim
from model.vae import VAE
from training.nll import protocol_report


def binarize_fixed(x: np.ndarray, *, seed: int) -> np.ndarray:
    """Binarize once with a fixed seed, so test NLLs are comparable across runs."""
    rng = np.random.default_rng(seed)
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


@torch.no_grad()
def score_examples(
    model: VAE, x: np.ndarray, *, k: int = 1, seed: int = 0, batch_size: int = 512, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Per example: reconstruction NLL, KL, -ELBO and -IWAE bound with k samples (nats). For the NLL by
    the published protocol (K=5000 on every test image), training.nll is the fast path."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, batch_size // max(1, k // 64 + 1))  # keep (rows * k) decoder passes bounded
    parts: dict[str, list[np.ndarray]] = {"reconstruction_nll": [], "kl": [], "elbo_score": [], "iwae_score": []}
    components = model.prior_components() if model.prior is not None else None  # once, not per batch
    for start in range(0, len(x), rows):
        xb = torch.from_numpy(x[start:start + rows]).to(device)
        eps = torch.randn(len(xb), k, model.config.latent_dim, generator=gen).to(device)
        terms = model.monte_carlo_terms(xb, eps, components=components)
        recon = -terms.log_px_features.sum(-1).mean(1)
        kl = terms.kl
        for name, value in (("reconstruction_nll", recon), ("kl", kl), ("elbo_score", recon + kl),
                            ("iwae_score", -iwae_bound(terms.log_weights))):
            parts[name].append(value.double().cpu().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


@torch.no_grad()
def latent_statistics(
    model: VAE, x: np.ndarray, *, active_threshold: float = 0.01, batch_size: int = 1024, device: str = "cpu"
) -> dict[str, Any]:
    """Average KL per latent dimension and active units: Cov_x(E_q[z_j]) > threshold (Burda et al. 2015).

    The KL per dimension is q's to N(0, I) for either prior: a VampPrior has no per-dimension KL. With
    it, a collapsed dimension (q the same for every x) need not be N(0, 1); activity still flags it."""
    model.eval()
    mus, log_vars = zip(*(model.encoder(torch.from_numpy(x[start:start + batch_size]).to(device))
                          for start in range(0, len(x), batch_size)))
    return posterior_statistics(torch.cat(mus).cpu(), torch.cat(log_vars).cpu(), active_threshold=active_threshold)


def posterior_statistics(mu: torch.Tensor, log_var: torch.Tensor, *, active_threshold: float = 0.01) -> dict[str, Any]:
    """latent_statistics from the posteriors mu, log_var (N, D) of the items (any encoder's)."""
    kl_dims = (kl_per_dim(mu, log_var).double().sum(0) / len(mu)).numpy()
    activity = mu.double().var(0, unbiased=False).numpy()
    return {
        "kl_per_dim": [round(float(v), 5) for v in kl_dims],
        "activity_per_dim": [round(float(v), 5) for v in activity],
        "active_units": int((activity > active_threshold).sum()),
    }


def collapsed_dimensions(kl_per_dim: list[float], activity: list[float], *, kl_threshold: float,
                         active_threshold: float) -> list[int]:
    """Dimensions that carry no information by either rule: average KL or activity below threshold."""
    return [j for j, (kl, act) in enumerate(zip(kl_per_dim, activity)) if kl < kl_threshold or act <= active_threshold]


def auroc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic, ties counted half."""
    scores, is_anomaly = np.asarray(scores, dtype=np.float64), np.asarray(is_anomaly, dtype=bool)
    n_pos, n_neg = int(is_anomaly.sum()), int((~is_anomaly).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both normal and anomalous examples")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    unique, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[is_anomaly].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate_model(
    model: VAE, x: np.ndarray, *, iwae_k: int, iwae_examples: int, seed: int = 0, binarized: bool = False,
    active_threshold: float = 0.01, device: str = "cpu",
) -> dict[str, Any]:
    """Test -ELBO on every example (1 sample); the IWAE NLL with iwae_k samples on the first
    iwae_examples (0: all, the published protocol) with its standard error (training.nll)."""
    elbo = score_examples(model, x, k=1, seed=seed, device=device)
    nll = protocol_report(model, x, k=iwae_k, examples=iwae_examples, binarized=binarized, seed=seed + 1)
    stats = latent_statistics(model, x, active_threshold=active_threshold, device=device)
    return {
        "test_neg_elbo": float(elbo["elbo_score"].mean()),
        "test_reconstruction_nll": float(elbo["reconstruction_nll"].mean()),
        "test_kl": float(elbo["kl"].mean()),
        **nll,
        "test_examples": len(x),
        **stats,
    }
