"""The Monte Carlo noise and latent draws of a request, from numpy.random.default_rng(seed): the
same request gets the same numbers, in the service and in offline bulk scoring alike."""

from __future__ import annotations

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=256)
def _standard_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    noise.flags.writeable = False  # shared between requests
    return noise


def standard_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, I) noise from numpy.random.default_rng(seed), memoized for small shapes: seeding a
    generator costs more than a one-item inference, and most requests reuse a few seeds."""
    if math.prod(shape) <= 1 << 16:  # math.prod: np.prod costs 3 us, more than the rest
        return _standard_normal(seed, shape)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
