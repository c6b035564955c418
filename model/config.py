"""The architecture config: a frozen dataclass saved with every checkpoint and manifest."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

# table: per column, Gaussian for numbers (masked where missing, with a Bernoulli on the missing
# indicator) and categorical for categories; table_blocks lays the features out (model/table_schema.py).
Likelihood = Literal["bernoulli", "gaussian", "table"]
TABLE_BLOCK_KINDS = ("gaussian", "gaussian_masked", "categorical")
GaussianVariance = Literal["learned", "fixed"]
Architecture = Literal["mlp", "conv"]
# standard: p(z) = N(0, I). vampprior: a mixture of the posteriors of learned pseudo-inputs
# (Tomczak & Welling 2018, "VAE with a VampPrior"); see model/prior.py.
Prior = Literal["standard", "vampprior"]
# conv: two stride-2 convolutions (H, W -> H//2//2, W//2//2) before the dense layers, mirrored in
# the decoder; any H and W of at least this many pixels.
CONV_MIN_SIZE = 4


@dataclass(frozen=True)
class VAEConfig:
    """Everything needed to rebuild the networks; downstream code rebuilds from this alone."""

    input_shape: tuple[int, ...] = (1, 28, 28)
    hidden_sizes: tuple[int, ...] = (512, 512)
    latent_dim: int = 20
    # bernoulli: images in [0, 1], decoder emits logits; gaussian: continuous / tabular data.
    likelihood: Likelihood = "bernoulli"
    # gaussian only: a learned per-feature log-variance, or a fixed one (fixed_log_var).
    gaussian_variance: GaussianVariance = "learned"
    fixed_log_var: float = 0.0
    # gaussian only: floor of the learned log-variance, so always-constant features (e.g. background
    # pixels) cannot drive the density to infinity.
    min_log_var: float = -7.0
    # mlp: dense layers on the flattened input. conv: a small conv stack first (images only), then
    # the hidden_sizes dense layers; the graphs still take and return flattened (B, F) tensors.
    architecture: Architecture = "mlp"
    # The prior p(z), and (vampprior only) its number of pseudo-inputs N: p(z) = (1/N) sum_n q(z | u_n).
    prior: Prior = "standard"
    pseudo_inputs: int = 500
    # table only: (kind, width) blocks of the encoded features, in order (TableSchema.blocks()).
    table_blocks: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.input_shape or any(d <= 0 for d in self.input_shape):
            raise ValueError(f"input_shape must be positive dimensions, got {self.input_shape}")
        if self.latent_dim <= 0:
            raise ValueError(f"latent_dim must be positive, got {self.latent_dim}")
        if any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        if self.likelihood not in ("bernoulli", "gaussian", "table"):
            raise ValueError(f"likelihood must be 'bernoulli', 'gaussian' or 'table', got {self.likelihood!r}")
        if (self.likelihood == "table") != bool(self.table_blocks):
            raise ValueError("likelihood 'table' and table_blocks go together (table_blocks: the schema's blocks)")
        if self.table_blocks and (sum(w for _, w in self.table_blocks) != self.input_dim
                                  or any(k not in TABLE_BLOCK_KINDS or w < 1 for k, w in self.table_blocks)):
            raise ValueError(f"table_blocks {self.table_blocks} must be {TABLE_BLOCK_KINDS} blocks whose widths "
                             f"sum to the {self.input_dim} features")
        if self.gaussian_variance not in ("learned", "fixed"):
            raise ValueError(f"gaussian_variance must be 'learned' or 'fixed', got {self.gaussian_variance!r}")
        if self.architecture not in ("mlp", "conv"):
            raise ValueError(f"architecture must be 'mlp' or 'conv', got {self.architecture!r}")
        if self.prior not in ("standard", "vampprior"):
            raise ValueError(f"prior must be 'standard' or 'vampprior', got {self.prior!r}")
        if self.pseudo_inputs < 1:
            raise ValueError(f"pseudo_inputs must be at least 1, got {self.pseudo_inputs}")
        if self.architecture == "conv" and not (
            self.is_image and all(d >= CONV_MIN_SIZE for d in self.input_shape[1:])
        ):
            raise ValueError(f"architecture 'conv' needs an image input_shape (C, H, W) with H and W of at least "
                             f"{CONV_MIN_SIZE}, got {self.input_shape}")

    @property
    def input_dim(self) -> int:
        """Number of features of one flattened example."""
        return math.prod(self.input_shape)

    @property
    def is_image(self) -> bool:
        """Images are (C, H, W) with pixels in [0, 1], whatever the likelihood."""
        return len(self.input_shape) == 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (tuples become lists)."""
        return {k: [list(b) if isinstance(b, tuple) else b for b in v] if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of to_dict; unknown keys are an error so stale manifests fail loudly. Missing keys take
        their defaults, so manifests written before a field existed (e.g. architecture, prior) still load."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown VAEConfig keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("input_shape", "hidden_sizes"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        if "table_blocks" in values:
            values["table_blocks"] = tuple((str(kind), int(width)) for kind, width in values["table_blocks"])
        return cls(**values)
