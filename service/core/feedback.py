"""Labelled feedback: what a label is checked against, and the live figures it gives per version.

The rule for a label that arrives twice (docs/feedback-and-jobs.md): one item (one score_id, or one
item's bytes for one model version) holds one label. The same label again changes nothing
("unchanged"); a different label is a correction and replaces the older one ("updated"); the same
item twice in one request is an error naming both places.

Figures at the version's current threshold (a recalibrated one when there is one), with Wilson score
intervals (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the normal approximation for
small counts and proportions near 0 or 1, which is what a few dozen labels give).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from service.core.store import FeedbackRow

Z_95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (None without trials)."""
    if trials == 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # exactly 0 and 1 at the ends (the formula gives them up to float rounding)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == trials else min(1.0, centre + half))


def rate(successes: int, trials: int) -> dict[str, Any]:
    """A proportion, its counts and its 95% interval (value and interval null without trials)."""
    interval = wilson(successes, trials)
    return {"value": successes / trials if trials else None, "successes": successes, "trials": trials,
            "ci95": list(interval) if interval else None}


def confusion(rows: Iterable[FeedbackRow], threshold: float) -> dict[str, int]:
    """Counts at a threshold: flagged means score > threshold, as /anomaly-score flags."""
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for row in rows:
        flagged = row.score > threshold
        counts[("t" if flagged == (row.label == "anomaly") else "f") + ("p" if flagged else "n")] += 1
    return counts


def summarize(rows: list[FeedbackRow], threshold_of: Callable[[str, str], tuple[float | None, str]]
              ) -> list[dict[str, Any]]:
    """Per version and score variant: label counts, and precision, recall and false-alarm rate at
    the threshold threshold_of(version, variant) gives ((threshold, where it comes from))."""
    groups: dict[tuple[str, str], list[FeedbackRow]] = {}
    for row in rows:
        groups.setdefault((row.version, row.variant), []).append(row)
    out = []
    for (version, variant), members in sorted(groups.items()):
        threshold, source = threshold_of(version, variant)
        anomalies = sum(r.label == "anomaly" for r in members)
        entry: dict[str, Any] = {"version": version, "score_variant": variant,
                                 "labels": {"total": len(members), "anomaly": anomalies,
                                            "normal": len(members) - anomalies},
                                 "threshold": threshold, "threshold_source": source}
        if threshold is not None:
            c = confusion(members, threshold)
            entry.update(confusion=c, precision=rate(c["tp"], c["tp"] + c["fp"]),
                         recall=rate(c["tp"], c["tp"] + c["fn"]), false_alarm_rate=rate(c["fp"], c["fp"] + c["tn"]))
        out.append(entry)
    return out
