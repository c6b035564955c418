"""Conformal p-values and Benjamini–Hochberg, in numpy (no torch): calibrated decisions for the service.

A score s gets p = (1 + #{calibration scores >= s}) / (n + 1) against n scores of held-out normal
data. If s comes from the same distribution as the calibration data (exchangeable), then
P(p <= a) <= a for every a: flagging p <= a is a false-alarm rate of at most a, without any
assumption on the score's distribution (Bates, Candès, Lei, Romano & Sesia 2023, "Testing for
outliers with conformal p-values"). Conditional on one calibration set the false-alarm rate of
`p <= a` is Beta(l, n + 1 - l) distributed, l = floor(a (n + 1)) (Vovk 2012). These p-values are
positively dependent (PRDS), so Benjamini–Hochberg on a batch of them controls the false
discovery rate at q (Bates et al. 2023, Theorem 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def conformal_p_values(calibration_sorted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{calibration >= s}) / (n + 1) per score; calibration_sorted ascending, (n,) -> (B,)."""
    n = len(calibration_sorted)
    at_least = n - np.searchsorted(calibration_sorted, scores, side="left")  # (B,) counts of cal >= s
    return (1.0 + at_least) / (n + 1.0)


def grid_p_values(levels: np.ndarray, quantiles: np.ndarray, examples: int, scores: np.ndarray) -> np.ndarray:
    """The same formula with #{calibration >= s} read off a quantile grid (n (1 - F(s)), F
    interpolated): for models exported without their calibration scores. Approximate: it can be
    off by the grid's step (0.1% of n) in the count, so the guarantee holds only up to that."""
    below = np.interp(scores, quantiles, levels)  # (B,) share of calibration scores below s
    return (1.0 + examples * (1.0 - below)) / (examples + 1.0)


def benjamini_hochberg(p_values: np.ndarray, q: float) -> tuple[np.ndarray, float]:
    """Which items to flag at false discovery rate q, and the p-value cutoff (0.0: none flagged).

    Benjamini & Hochberg 1995: with p_(1) <= ... <= p_(m), flag the k smallest, k the largest
    index with p_(k) <= k q / m.
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    m = len(p_values)
    ordered = np.sort(p_values)
    passing = np.nonzero(ordered <= q * np.arange(1, m + 1) / m)[0]
    if len(passing) == 0:
        return np.zeros(m, dtype=bool), 0.0
    cutoff = float(ordered[passing[-1]])
    return p_values <= cutoff, cutoff


class ConformalCalibration:
    """p-values for each score variant of one model, from its manifest's calibration section.

    Exports since the calibration scores were kept have `sorted_scores` (exact conformal p-values);
    older ones only a 0.1% quantile grid (approximate p-values, method "quantile_grid").
    """

    def __init__(self, calibration: Mapping[str, Any]) -> None:
        self.examples = int(calibration.get("examples") or 0)
        self._levels = np.asarray(calibration.get("quantile_levels", []), dtype=np.float64)
        self._grids = {name: np.asarray(v["quantiles"], dtype=np.float64)
                       for name, v in calibration.get("variants", {}).items() if "quantiles" in v}
        self._sorted = {name: np.asarray(v, dtype=np.float64) for name, v in calibration.get("sorted_scores", {}).items()}

    def method(self, variant: str) -> str | None:
        """"conformal", "quantile_grid", or None when the variant has no calibration at all."""
        if variant in self._sorted:
            return "conformal"
        if variant in self._grids and self.examples > 0 and len(self._levels):
            return "quantile_grid"
        return None

    def p_values(self, variant: str, scores: np.ndarray) -> np.ndarray | None:
        method = self.method(variant)
        if method == "conformal":
            return conformal_p_values(self._sorted[variant], scores)
        if method == "quantile_grid":
            return grid_p_values(self._levels, self._grids[variant], self.examples, scores)
        return None
