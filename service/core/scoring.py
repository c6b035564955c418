"""What a score means for one model: which scorer graph computes a variant, the threshold for a
target false-positive rate, percentiles and conformal p-values among held-out normal data.

From the manifest's `calibration` (export computed it with the exported scorer), shared by the
service's handles and offline bulk scoring, so both give the same thresholds and percentiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.conformal import ConformalCalibration
from model.contract import NOISE_INPUT, score_output
from service.core.errors import InvalidInput

GraphIO = Mapping[str, tuple[Sequence[str], Sequence[str]]]  # graph -> (input names, output names)


class ScoreCalibration:
    """The calibration grids as arrays (converted once: percentiles are computed on every request)."""

    def __init__(self, calibration: dict[str, Any], graphs: GraphIO) -> None:
        self.calibration = calibration
        self.levels = np.asarray(calibration.get("quantile_levels", []), dtype=np.float64)
        self.grids = {name: np.asarray(v["quantiles"], dtype=np.float64)
                      for name, v in calibration.get("variants", {}).items()}
        self.conformal = ConformalCalibration(calibration)
        # Per variant, the smallest scorer graph that computes it (models exported before
        # scorer_core have only scorer, which computes every variant).
        scorers = {g: outputs for g, (inputs, outputs) in graphs.items() if NOISE_INPUT in inputs}
        self.scorers: dict[str, str] = {}
        for variant in self.grids:
            able = [g for g, outputs in scorers.items() if score_output(variant) in outputs]
            if able:
                self.scorers[variant] = min(able, key=lambda g: len(scorers[g]))

    def scorer(self, variant: str) -> str:
        """The graph to run for a variant; InvalidInput when the model cannot compute it."""
        graph = self.scorers.get(variant)
        if graph is None:
            raise InvalidInput(f"score: the model's graphs do not compute variant {variant!r}")
        return graph

    def threshold(self, variant: str, *, target_fpr: float | None = None,
                  contamination: float | None = None) -> tuple[float, float]:
        """(threshold, its quantile of the normal-data calibration): the default quantile, or 1 - rate."""
        if target_fpr is not None and contamination is not None:
            raise InvalidInput("target_fpr and contamination: give at most one of them")
        variant_cal = self.calibration.get("variants", {}).get(variant)
        if variant_cal is None:
            raise InvalidInput(f"score: the model has no calibration for variant {variant!r}")
        rate = target_fpr if target_fpr is not None else contamination
        if rate is None:
            return float(variant_cal["threshold"]), float(self.calibration["default_threshold_quantile"])
        quantile = 1.0 - rate
        return float(np.interp(quantile, self.levels, self.grids[variant])), quantile

    def percentiles(self, variant: str, scores: np.ndarray) -> np.ndarray:
        """Share of calibration scores below each score, in percent."""
        return np.interp(scores, self.grids[variant], self.levels) * 100.0

    def p_values(self, variant: str, scores: np.ndarray) -> np.ndarray | None:
        """Conformal p-values (model/conformal.py); None for a variant without calibration scores."""
        return self.conformal.p_values(variant, scores)
