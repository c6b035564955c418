"""Training options as one frozen dataclass (saved with checkpoints and the manifest). No torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Precision = Literal["fp32", "bf16"]
PrecisionRequest = Literal["auto", "fp32", "bf16"]  # auto: training.precision decides per machine
LRSchedule = Literal["constant", "cosine"]
Objective = Literal["elbo", "iwae"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the architecture lives in model.config.VAEConfig."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    beta: float = 1.0
    kl_warmup_steps: int = 0  # linear KL annealing from 0 to beta over this many steps
    free_bits: float = 0.0  # nats per latent dimension (Kingma et al. 2016); 0 disables
    binarize: bool = True  # dynamic binarization (bernoulli image models only)
    # bf16 autocast, fp32, or auto (bf16 where the device runs it natively and measurably faster:
    # training/precision.py). auto is the CLI's default; here fp32, so library and test runs do not
    # depend on a timing. train() saves the precision it used, and why, with the checkpoint.
    precision: PrecisionRequest = "fp32"
    # Exponential moving average of the weights (Polyak averaging): what validation, checkpoints and
    # export use. The decay warms up as (1 + n) / (20 + n), so early averages forget the random init.
    # 0 disables. Measured on Fashion-MNIST: the average reaches a given test -ELBO in ~25% fewer epochs.
    ema_decay: float = 0.999
    collapse_kl_threshold: float = 0.01  # nats: a dimension below this average KL is collapsed
    active_unit_threshold: float = 0.01  # Cov_x(E_q[z]) above this: an active unit (Burda et al.)
    max_steps: int = 0  # stop after this many optimizer steps (0: no limit), for smoke runs
    # constant: lr throughout. cosine: lr * (1 + cos(pi * step / total_steps)) / 2, to ~0 at the end.
    lr_schedule: LRSchedule = "constant"
    # elbo: the (beta-weighted) negative ELBO, one draw per example. iwae: the importance-weighted
    # bound with train_k draws (Burda et al. 2015), the KL part annealed by kl_weight as the ELBO's is.
    objective: Objective = "elbo"
    train_k: int = 1
    # Early stopping (as Tomczak & Welling's VampPrior code): the count of epochs since the best validation
    # -ELBO restarts during the KL warm-up; the run stops once it exceeds this. 0: every epoch runs.
    patience_epochs: int = 0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "beta": self.beta >= 0, "kl_warmup_steps": self.kl_warmup_steps >= 0,
            "free_bits": self.free_bits >= 0, "max_steps": self.max_steps >= 0, "ema_decay": 0 <= self.ema_decay < 1,
            "train_k": self.train_k >= 1, "patience_epochs": self.patience_epochs >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} is out of range: {getattr(self, name)!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.objective not in ("elbo", "iwae"):
            raise ValueError(f"objective must be elbo or iwae, got {self.objective!r}")
        if self.objective == "iwae" and self.free_bits > 0:
            raise ValueError("free_bits: the IWAE objective has no per-dimension KL to floor; use kl_warmup_steps")
        if self.objective == "elbo" and self.train_k != 1:
            raise ValueError(f"train_k: {self.train_k} draws per example need objective iwae (the ELBO uses one)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of optimizer step `step` (0-based) of `total_steps`."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))

    def kl_weight(self, step: int) -> float:
        """beta times the linear warm-up factor min(1, step / kl_warmup_steps)."""
        if self.kl_warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)
