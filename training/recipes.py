"""Named training recipes (`vaeserve train --recipe NAME`): option values filled in for the options a
command line does not give. No torch."""

from __future__ import annotations

from typing import Any

# The protocol behind the published Fashion-MNIST NLLs we compare with (Tomczak & Welling 2018, "VAE
# with a VampPrior", section 4 and their code; the same setting in Norouzi et al. 2020, "Exemplar VAE",
# Table 1: VAE 228.70, VampPrior 227.35 nats): 50,000 training and 10,000 validation images of the
# 60,000, Adam at lr 5e-4, batch 100, an MLP of 300-300 with z = 40, a VampPrior of 500 pseudo-inputs,
# a linear KL warm-up over 100 epochs (500 steps each: 50,000 steps), and early stopping on the
# validation -ELBO with a patience of 50 epochs counted after the warm-up, at most 2,000 epochs.
# They use gated dense layers; ours are plain ReLU layers (docs/training.md, "The published recipe").
PUBLISHED: dict[str, Any] = {
    "val_fraction": 1 / 6,
    "hidden": [300, 300],
    "latent_dim": 40,
    "prior": "vampprior",
    "pseudo_inputs": 500,
    "lr": 5e-4,
    "lr_schedule": "constant",
    "batch_size": 100,
    "kl_warmup_steps": 100 * 500,
    "patience_epochs": 50,
    "epochs": 2000,
}

RECIPES: dict[str, dict[str, Any]] = {"published": PUBLISHED}


def apply_recipe(name: str | None, values: dict[str, Any], *, given: set[str]) -> dict[str, str]:
    """Set the recipe's values in `values` (parsed options by dest) except those in `given`; returns
    what it set, for the log."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: one of {', '.join(sorted(RECIPES))}")
    applied = {}
    for dest, value in RECIPES[name].items():
        if dest not in given:
            values[dest] = value
            applied[dest] = _shown(value)
    return applied


def _shown(value: Any) -> str:
    """A value as it would be typed: `300 300`, `0.166667`."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)
