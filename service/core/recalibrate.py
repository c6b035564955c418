"""Choosing a threshold from labels: the labelled anomalies and normals plus the normal calibration
scores of the export (held-out normal data), for one goal.

Every candidate threshold t (each distinct score; flagged means score > t) gets
    fpr(t)       = #{normal scores > t} / #normal, over the calibration scores and the labelled normals;
    recall(t)    = #{labelled anomalies > t} / #labelled anomalies;
    precision(t) = pi recall / (pi recall + (1 - pi) fpr), pi the share of anomalies in the traffic
                   (given, or the labelled share: an estimate only as good as the labelling is random).
Goals: target_fpr (the lowest t with fpr <= target: the most recall within the false-alarm budget),
precision (the lowest t with precision >= target), f1 (the t of the highest F1; ties: the higher t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.core.errors import Conflict, InvalidInput

Goal = Literal["target_fpr", "precision", "f1"]
MIN_ANOMALIES = 3  # precision and F1 goals need at least this many labelled anomalies


@dataclass(frozen=True)
class Choice:
    threshold: float
    estimates: dict[str, float | None]  # fpr, recall, precision, f1 at the threshold


def choose_threshold(*, goal: Goal, target: float | None, anomalies: np.ndarray, normals: np.ndarray,
                     calibration: np.ndarray, prevalence: float | None = None) -> Choice:
    """The threshold for `goal` (see the module docstring); Conflict when no threshold reaches it."""
    if goal in ("target_fpr", "precision") and (target is None or not 0 < target < 1):
        raise InvalidInput(f"target: goal {goal!r} needs a target in (0, 1)")
    if goal in ("precision", "f1") and len(anomalies) < MIN_ANOMALIES:
        raise Conflict(f"goal {goal!r} needs at least {MIN_ANOMALIES} labelled anomalies for this version and "
                       f"score variant; there are {len(anomalies)}")
    negatives = np.sort(np.concatenate([calibration, normals]).astype(np.float64))
    positives = np.sort(np.asarray(anomalies, dtype=np.float64))
    if len(negatives) == 0:
        raise Conflict("no normal scores: the model has no calibration scores and no normal labels")
    candidates = np.unique(np.concatenate([negatives, positives]))  # ascending
    fpr = (len(negatives) - np.searchsorted(negatives, candidates, side="right")) / len(negatives)
    recall = ((len(positives) - np.searchsorted(positives, candidates, side="right")) / len(positives)
              if len(positives) else np.full(len(candidates), np.nan))
    pi = prevalence if prevalence is not None else len(positives) / max(1, len(positives) + len(normals))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = pi * recall / (pi * recall + (1 - pi) * fpr)
        f1 = 2 * precision * recall / (precision + recall)
    if goal == "target_fpr":
        assert target is not None, "checked above"
        ok = np.nonzero(fpr <= target)[0]
    elif goal == "precision":
        assert target is not None, "checked above"
        ok = np.nonzero(np.nan_to_num(precision, nan=0.0) >= target)[0]
    else:
        best = np.nanmax(np.nan_to_num(f1, nan=-1.0))
        ok = np.nonzero(np.nan_to_num(f1, nan=-1.0) >= best)[0][-1:]  # ties: the highest threshold
    if len(ok) == 0:
        reached = float(np.nanmax(np.nan_to_num(precision, nan=0.0)))
        raise Conflict(f"no threshold reaches precision {target} on these labels (at most {reached:.3f} at "
                       f"prevalence {pi:.3f}); label more, or ask for less")
    i = int(ok[0])
    return Choice(float(candidates[i]), {"fpr": _num(fpr[i]), "recall": _num(recall[i]),
                                         "precision": _num(precision[i]), "f1": _num(f1[i]), "prevalence": pi})


def _num(value: Any) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value
