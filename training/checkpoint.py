"""Checkpoints that restore safely: plain tensors and JSON-able values, loaded weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import VAEConfig
from model.vae import VAE


def save_checkpoint(path: Path, *, model: VAE, extra: dict[str, Any]) -> None:
    """Write weights, the architecture config and JSON-able metadata atomically."""
    payload = {"config": model.config.to_dict(), "state_dict": model.state_dict(), **extra}
    tmp = Path(path).with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, *, device: str = "cpu") -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE from its saved config; torch.load(weights_only=True) never unpickles code."""
    payload = torch.load(Path(path), map_location=device, weights_only=True)
    model = VAE(VAEConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, payload


def standardization_tensors(payload: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (mean, std) a checkpoint was trained with, or (None, None) for images."""
    stats = payload.get("standardization")
    if not stats:
        return None, None
    return (torch.tensor(np.asarray(stats["mean"], dtype=np.float32)),
            torch.tensor(np.asarray(stats["std"], dtype=np.float32)))
