"""Latent-space geometry in numpy, shared by training's pictures and the torch-free service."""

from __future__ import annotations

from typing import Literal

import numpy as np

InterpolationMethod = Literal["linear", "slerp"]


def interpolate(
    z_start: np.ndarray, z_end: np.ndarray, *, steps: int, method: InterpolationMethod = "linear"
) -> np.ndarray:
    """Points from z_start to z_end (both (D,)), endpoints included: (steps, D).

    slerp follows the great circle (White 2016, "Sampling Generative Networks"), which keeps the
    norm typical of N(0, I) samples instead of cutting through the low-density centre.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]  # (S, 1)
    a, b = z_start.astype(np.float64), z_end.astype(np.float64)
    if method == "linear":
        return ((1 - t) * a + t * b).astype(np.float32)
    if method != "slerp":
        raise ValueError(f"method must be 'linear' or 'slerp', got {method!r}")
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return ((1 - t) * a + t * b).astype(np.float32)
    cos = np.clip(np.dot(a / norm_a, b / norm_b), -1.0, 1.0)
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:  # (anti)parallel: slerp is undefined, linear is the limit
        return ((1 - t) * a + t * b).astype(np.float32)
    out = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return out.astype(np.float32)


def traverse(z_base: np.ndarray, *, dims: list[int], values: np.ndarray) -> np.ndarray:
    """Vary one dimension at a time over values, others fixed: (len(dims) * len(values), D)."""
    rows = []
    for dim in dims:
        block = np.repeat(z_base[None, :], len(values), axis=0)
        block[:, dim] = values
        rows.append(block)
    return np.concatenate(rows).astype(np.float32)
