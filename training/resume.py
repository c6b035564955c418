"""Early stopping and resuming: the loop's progress, and everything its next epoch depends on.

After every epoch last.pt carries, beside the averaged weights every checkpoint has, a `resume` record:
the raw weights, the optimizer (its moments and step counts), the weight average, the random states
(the run's generator draws the shuffling, binarization and noise), the epoch and step (the learning
rate schedule and the KL warm-up are functions of the step) and the early-stopping state. `vaeserve
train --resume` restores them, so an interrupted run ends with the weights an uninterrupted one would
have. An epoch cut short by a kill is redone from its start.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.config import VAEConfig
from training.averaging import WeightAverage
from training.config import TrainConfig

# Options a resumed run may change: how long it runs (and the precision: `auto` resolves to what the
# run used, restored from the checkpoint). Any other difference would make a different run.
MAY_CHANGE = frozenset({"epochs", "max_steps", "precision"})


@dataclass
class Progress:
    """Epochs and steps done, the best validation -ELBO so far and the early-stopping count."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best, counted after the KL warm-up
    finished: bool = False  # stopped early or by max_steps: nothing to resume
    history: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, val_neg_elbo: float, *, epoch: int, warming_up: bool) -> bool:
        """Record an epoch's validation -ELBO; True when it is the best so far.

        As Tomczak & Welling's VampPrior code: the count restarts during the warm-up (the -ELBO is
        still moving with the KL weight), so patience P stops a run at the earliest P + 1 epochs after it."""
        if val_neg_elbo < self.best_val:
            self.best_val, self.best_epoch, self.stale_epochs = val_neg_elbo, epoch, 0
            return True
        self.stale_epochs = 0 if warming_up else self.stale_epochs + 1
        return False

    def patience_exhausted(self, patience_epochs: int) -> bool:
        return patience_epochs > 0 and self.stale_epochs > patience_epochs


def resume_record(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, average: WeightAverage | None,
                  gen: torch.Generator, progress: Progress) -> dict[str, Any]:
    """What last.pt carries to resume from: tensors and plain values (loaded with weights_only=True)."""
    counters = {k: v for k, v in asdict(progress).items() if k != "history"}
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "average": average.state_dict() if average is not None else None,
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # The metrics records as JSON: they may hold values torch's safe loader would refuse.
        "progress": counters, "history": json.dumps(progress.history),
    }


def read_resume_record(path: Path, *, model_config: VAEConfig, train_config: TrainConfig,
                       data_spec: dict[str, Any] | None) -> dict[str, Any]:
    """last.pt's payload, refused with a plain message when it cannot continue this run."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {path.name} in {path.parent} to resume from")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "resume" not in payload:
        raise ValueError(f"--resume: {path} has no resume state (written before --resume existed)")
    saved_train = payload["train_config"]
    differs = [k for k, v in train_config.to_dict().items() if k not in MAY_CHANGE and saved_train.get(k) != v]
    differs += [f"model {k}" for k, v in model_config.to_dict().items() if payload["config"].get(k) != v]
    if (payload.get("data_spec") or None) != data_spec:
        differs.append("data")
    if differs:
        raise ValueError(f"--resume: {path} was trained with other options ({', '.join(differs)}); give the "
                         "options of the interrupted run")
    return dict(payload)


def restore(record: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            average: WeightAverage | None, gen: torch.Generator) -> Progress:
    """Put a resume_record back in place; returns the progress to continue from."""
    model.load_state_dict(record["model"])
    optimizer.load_state_dict(record["optimizer"])
    if average is not None:
        average.load_state_dict(record["average"])
    gen.set_state(record["generator"])
    torch.set_rng_state(record["torch_rng"])
    if record["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(record["cuda_rng"])
    return Progress(**record["progress"], history=json.loads(record["history"]))
