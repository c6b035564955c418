"""What a user's own model must show, in PyTorch, before anything of its export is written: items the
likelihood accepts, finite and repeatable posteriors, decoder outputs finite and in range for the
declared likelihood (at the calibration items' posterior means and at N(0, I) draws, what /sample
decodes), a finite -ELBO; and from the same data the normal statistics the scorer compares with."""

from __future__ import annotations

import math

import numpy as np
import torch

from model.adapted_graphs import OwnScoreGraph
from model.adapter import AdaptedVAE, ModelRefused
from model.graphs import NormalReference
from model.losses import mahalanobis_sq
from training.export import CALIBRATION_MC_SAMPLES, latent_reference, location_scale

MIN_CALIBRATION_ITEMS = 32  # fewer make thresholds and the latent covariance meaningless
BATCH = 256
PRIOR_DRAWS = 256  # N(0, I) latents decoded to check what /sample will answer


def checked_items(items: np.ndarray, *, input_shape: tuple[int, ...], likelihood: str, what: str) -> np.ndarray:
    """Items (n, F) or (n, *input_shape) -> (n, F) float32, finite, in [0, 1] for images and Bernoulli data."""
    x = np.asarray(items)
    features = math.prod(input_shape)
    if x.ndim < 2 or x[0].size != features or x.dtype.kind not in "fiu":
        raise ModelRefused(f"{what}: items must be a numeric array (n, {features}) or (n, {', '.join(map(str, input_shape))}), "
                           f"got {x.dtype} {x.shape}")
    x = x.reshape(len(x), features).astype(np.float32)
    if len(x) < MIN_CALIBRATION_ITEMS:
        raise ModelRefused(f"{what}: at least {MIN_CALIBRATION_ITEMS} normal items are needed, got {len(x)}")
    if not np.isfinite(x).all():
        raise ModelRefused(f"{what}: {int((~np.isfinite(x)).any(1).sum())} items hold NaN or infinite values")
    if (likelihood == "bernoulli" or len(input_shape) == 3) and (x.min() < 0 or x.max() > 1):
        raise ModelRefused(f"{what}: values must be in [0, 1] ({'pixels' if len(input_shape) == 3 else 'Bernoulli data'}), "
                           f"found [{x.min():.3g}, {x.max():.3g}]")
    return x


@torch.no_grad()
def posteriors(vae: AdaptedVAE, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """mu, log_var (N, D) of the items; ModelRefused unless finite, and the same when asked twice."""
    parts = [vae.encode(torch.from_numpy(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]
    mu, log_var = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    bad = ~(torch.isfinite(mu).all(1) & torch.isfinite(log_var).all(1))
    if bad.any():
        raise ModelRefused(f"encode(x) gave NaN or infinite mu or log_var for {int(bad.sum())} of {len(x)} "
                           f"calibration items (first: item {int(bad.nonzero()[0, 0])})")
    again = vae.encode(torch.from_numpy(x[:BATCH]))
    if not (torch.equal(again[0], mu[:BATCH]) and torch.equal(again[1], log_var[:BATCH])):
        raise ModelRefused("encode(x) gave different mu or log_var for the same items twice: the model draws random "
                           "numbers in eval mode (dropout left on, or sampling inside encode); vaeserve feeds the "
                           "noise itself, so that every answer is reproducible")
    return mu, log_var


@torch.no_grad()
def check_decoder(vae: AdaptedVAE, mu: torch.Tensor, *, seed: int = 0) -> None:
    """decode(z) at the posterior means and at N(0, I) draws: finite, and probabilities in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    for where, z in (("the calibration items' posterior means", mu),
                     ("N(0, I) latents (what /sample decodes)", torch.randn(PRIOR_DRAWS, mu.shape[1], generator=gen))):
        for start in range(0, len(z), BATCH):
            params = vae.decode(z[start:start + BATCH])
            _check_params(params, vae.decoder_output, where=where)


def _check_params(params: torch.Tensor | tuple[torch.Tensor, torch.Tensor], decoder_output: str, *, where: str) -> None:
    parts = params if isinstance(params, tuple) else (params,)
    names = ("mean", "log_var") if decoder_output == "mean_log_var" else (decoder_output,)
    for name, part in zip(names, parts):
        if not torch.isfinite(part).all():
            raise ModelRefused(f"decode(z) gave NaN or infinite {name} values at {where}")
    low, high = float(parts[0].min()), float(parts[0].max())
    if decoder_output == "probs" and (low < 0 or high > 1):
        raise ModelRefused(f"decode(z) gave \"probabilities\" outside [0, 1] (min {low:.3g}, max {high:.3g}) at "
                           f"{where}: decoder_output 'probs' needs a decoder that ends in a Sigmoid; one that ends "
                           "in a linear layer gives logits (decoder_output 'logits')")


@torch.no_grad()
def normal_statistics(vae: AdaptedVAE, reference_x: np.ndarray, calibration_x: np.ndarray, *,
                      calibration_mu: torch.Tensor) -> dict[str, torch.Tensor]:
    """NormalReference's latent part (model/graphs.py) from normal data, as export.normal_reference
    computes it for our models: mean and precision of the reference items' posterior means, and the
    location and scale of the -ELBO and latent scores on the calibration items. ModelRefused when the
    -ELBO is not finite."""
    reference_mu = calibration_mu if reference_x is calibration_x else posteriors(vae, reference_x)[0]
    mean, precision = latent_reference(reference_mu)
    latent_dim = int(mean.shape[0])
    scorer = OwnScoreGraph(vae, NormalReference(latent_dim, latent_dim)).eval()  # neutral: only elbo_score is read
    rng = np.random.default_rng(1)
    elbo = []
    for start in range(0, len(calibration_x), BATCH // 4):
        xb = calibration_x[start:start + BATCH // 4]
        eps = rng.standard_normal((len(xb), CALIBRATION_MC_SAMPLES, latent_dim), dtype=np.float32)
        elbo.append(scorer(torch.from_numpy(xb), torch.from_numpy(eps))[2])  # elbo_score (B,)
    elbo_score = torch.cat(elbo)
    if not torch.isfinite(elbo_score).all():
        bad = int((~torch.isfinite(elbo_score)).sum())
        raise ModelRefused(f"the -ELBO is NaN or infinite for {bad} of {len(elbo_score)} calibration items: "
                           "log p(x|z) or the KL overflows (a log-variance far too large or small?)")
    latent = mahalanobis_sq(calibration_mu.double(), mean, precision)
    return {"mean": mean, "precision": precision, "elbo_scale": location_scale(elbo_score),
            "latent_scale": location_scale(latent)}
