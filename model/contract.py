"""The torch-free contract between training, the service and the bulk scorer: the graphs' inputs and
outputs, the score variants, and the defaults both sides must agree on. The manifest
(model/manifest.py) records a model's own values; these are what every model shares."""

from __future__ import annotations

from typing import Literal

# The Monte Carlo samples K of a score by default: what export calibrates with (manifest
# calibration.mc_samples), what the API, the client and `vaeserve score` send, and the unit a
# scorer item's batching weight is counted in.
DEFAULT_MC_SAMPLES = 16
MAX_SEED = 2**63 - 1  # seeds go to numpy.random.default_rng: any non-negative int64

SCORER_OUTPUTS = ("reconstruction_nll", "kl", "elbo_score", "iwae_score", "latent_score", "elbo_latent_score",
                  "knn_score", "elbo_knn_score", "feature_nll", "mu")
NEIGHBOUR_OUTPUTS = ("knn_score", "elbo_knn_score")
# Graph -> (input names, output names), as exported and as the service feeds them.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": (("x",), ("mu", "log_var")),
    "decoder": (("z",), ("x_mean",)),
    "scorer": (("x", "eps"), SCORER_OUTPUTS),
    # The scorer without the neighbour bank, for every request that does not ask for a neighbour
    # score: it scores 1.06-1.16x as many items a second at K=16, 1.5-1.9x at K=1 (benchmarks/scorer_graphs.py).
    "scorer_core": (("x", "eps"), tuple(name for name in SCORER_OUTPUTS if name not in NEIGHBOUR_OUTPUTS)),
    # VampPrior models only: draws from the mixture prior for /sample (standard ones scale N(0, I) noise).
    "sampler": (("u", "noise"), ("z", "x_mean")),
}
REQUIRED_GRAPHS = ("encoder", "decoder", "scorer")
NOISE_INPUT = "eps"  # a graph fed Monte Carlo noise (B, K, D) is a scorer

# The variants offered and calibrated, each with what it computes. latent_score and knn_score alone
# are outputs (for v2 users) but not variants: on the one-class benchmark the latent distance was
# worse than elbo (mean AUROC 87.0 vs 89.8, MLP); the conv VAE's figures per variant are in
# docs/performance.md. elbo_latent stays for small tabular sets, where 5 neighbours among a few
# dozen training rows are coarse.
ScoreVariant = Literal["elbo", "iwae", "elbo_latent", "elbo_knn"]
SCORE_VARIANTS: dict[str, str] = {
    "elbo": "-ELBO = E_q[-log p(x|z)] + KL(q(z|x)||p(z)), K Monte Carlo samples (Kingma & Welling 2013)",
    "iwae": "-log (1/K) sum_k p(x,z_k)/q(z_k|x): importance-weighted bound on -log p(x) (Burda et al. 2015)",
    "elbo_latent": "(elbo - mean)/sd + (latent - mean)/sd, latent = (mu(x)-m)^T S^-1 (mu(x)-m) the Mahalanobis "
                   "distance of the posterior mean from normal training data (Lee et al. 2018); mean and sd from "
                   "held-out normal data",
    "elbo_knn": "(elbo - mean)/sd + (knn - mean)/sd, knn = mean Euclidean distance of the encoder's last hidden "
                "layer (centred, scaled per unit, top 64 principal components) to its 5 nearest of up to 8192 "
                "normal training items (Bergman et al. 2020, Deep Nearest Neighbor Anomaly Detection); mean and "
                "sd from held-out normal data",
}
DEFAULT_SCORE_VARIANT: ScoreVariant = "elbo"


def score_output(variant: str) -> str:
    """The scorer output that holds a variant's score."""
    return f"{variant}_score"


def csv_header_rows(first_line: str) -> int:
    """Feature rows in CSV (training data and bulk scoring alike): a first row that is not all
    numbers is a header, 1 row to skip; else 0."""
    try:
        [float(v) for v in first_line.strip().split(",")]
    except ValueError:
        return 1
    return 0
