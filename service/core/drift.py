"""Drift of the inputs: sliding windows of the encoder means mu(x) and of the scores served, per
model version, compared with the reference the export wrote (the validation split's, in the
manifest's `drift_reference`). No torch, no HTTP (GET /drift is service/http/routes/drift.py); the statistics are recomputed when asked (GET /drift or a
Prometheus scrape), never on the request path, which only appends a few rows to a deque.

Three signals, each with its own threshold (settings); a window drifts when any crosses it:
- mean shift: |mean_window(mu_j) - mean_ref(mu_j)| / sd_ref(mu_j), the largest over active units;
- Kolmogorov–Smirnov per active latent unit against the reference's quantiles: drift when the
  smallest p-value times the number of units (Bonferroni) is below drift_ks_alpha *and* the largest
  distance is at least drift_ks_min_distance. A 1,000-item window makes KS sensitive to shifts that
  do not matter: held-out normal Fashion-MNIST (the test file) sits 0.07 from the validation split
  (p 0.02 over 7 units) for the one-class test model, so significance alone is not enough;
- population stability index of the scores over the reference's deciles (PSI > 0.25 is the usual
  "significant shift"; Siddiqi 2006), per score variant, for requests at the calibration's K.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from service.settings import Settings

MAX_TRACKED_VERSIONS = 32  # windows kept for this many model versions (oldest forgotten first)
PSI_FLOOR = 1e-4  # empty bins count as this share, so PSI stays finite


def ks_distance(sorted_window: np.ndarray, levels: np.ndarray, quantiles: np.ndarray) -> float:
    """sup |F_window - F_ref| with F_ref interpolated from a quantile grid; sorted_window (n,)."""
    n = len(sorted_window)
    reference = np.interp(sorted_window, quantiles, levels)  # (n,) F_ref at each window point
    steps = np.arange(1, n + 1) / n
    return float(max(np.max(steps - reference), np.max(reference - (steps - 1.0 / n))))


def ks_p_value(distance: float, n: int, m: int) -> float:
    """Two-sample Kolmogorov–Smirnov p-value, asymptotic with Stephens' small-sample correction."""
    effective = n * m / (n + m)
    lam = (math.sqrt(effective) + 0.12 + 0.11 / math.sqrt(effective)) * distance
    if lam < 0.2:  # the series below needs many terms here, and its value is 1 to 1e-9
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k**2 * lam**2)), 0.0, 1.0))


def population_stability(values: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    """PSI = sum_i (a_i - e_i) ln(a_i / e_i) over the bins that `edges` (inner edges) make."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(expected))
    actual = np.maximum(counts / max(1, len(values)), PSI_FLOOR)
    expected = np.maximum(expected, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class DriftReference:
    """The validation split's latent means and score deciles, as export wrote them."""

    examples: int
    mc_samples: int
    mean: np.ndarray  # (D,)
    sd: np.ndarray  # (D,)
    active: np.ndarray  # (D,) bool: units whose mean varies over the data (others carry no signal)
    levels: np.ndarray  # (L,)
    quantiles: np.ndarray  # (D, L)
    score_edges: dict[str, np.ndarray]  # variant -> (9,) inner decile edges
    score_fractions: dict[str, np.ndarray]  # variant -> (10,) reference share per bin

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> DriftReference | None:
        ref = manifest.get("drift_reference")
        if not ref:
            return None
        latent, scores = ref["latent"], ref.get("scores", {})
        return cls(int(ref["examples"]), int(ref.get("mc_samples", 0)), np.asarray(latent["mean"]),
                   np.asarray(latent["sd"]), np.asarray(latent["active"], dtype=bool),
                   np.asarray(latent["quantile_levels"]), np.asarray(latent["quantiles"]),
                   {v: np.asarray(s["edges"]) for v, s in scores.items()},
                   {v: np.asarray(s["fractions"]) for v, s in scores.items()})


class Window:
    """The last max_items rows added within the last max_age_s seconds (blocks of rows, not copies)."""

    def __init__(self, max_items: int, max_age_s: float) -> None:
        self.max_items, self.max_age_s = max_items, max_age_s
        self._blocks: deque[tuple[float, np.ndarray]] = deque()
        self._rows = 0

    def add(self, rows: np.ndarray, now: float) -> None:
        self._blocks.append((now, rows))
        self._rows += len(rows)
        while self._blocks and self._rows - len(self._blocks[0][1]) >= self.max_items:
            self._rows -= len(self._blocks.popleft()[1])

    def values(self, now: float) -> np.ndarray | None:
        while self._blocks and now - self._blocks[0][0] > self.max_age_s:
            self._rows -= len(self._blocks.popleft()[1])
        if not self._blocks:
            return None
        return np.concatenate([rows for _, rows in self._blocks])[-self.max_items:]


class ModelDrift:
    """The windows of one model version and the comparison with its reference."""

    def __init__(self, ref: dict[str, str], reference: DriftReference | None, settings: Settings) -> None:
        self.ref, self.reference, self.settings = ref, reference, settings
        self.latent = Window(settings.drift_window_items, settings.drift_window_s)
        self.scores: dict[str, Window] = {}

    def add_latent(self, mu: np.ndarray) -> None:
        if self.reference is not None:
            self.latent.add(np.array(mu, dtype=np.float64), time.monotonic())

    def add_scores(self, variant: str, scores: np.ndarray, *, mc_samples: int) -> None:
        """Scores at another K than the calibration's have another spread (iwae another level): skipped."""
        ref = self.reference
        if ref is None or variant not in ref.score_edges or mc_samples != ref.mc_samples:
            return
        window = self.scores.get(variant)
        if window is None:
            window = self.scores[variant] = Window(self.settings.drift_window_items, self.settings.drift_window_s)
        window.add(np.array(scores, dtype=np.float64), time.monotonic())

    def report(self) -> dict[str, Any]:
        s, ref, now = self.settings, self.reference, time.monotonic()
        base: dict[str, Any] = {"model": self.ref, "window": {"max_items": s.drift_window_items,
                                                               "max_age_s": s.drift_window_s, "min_items": s.drift_min_items}}
        if ref is None:
            return {**base, "reference": None, "status": "no reference: the model was exported without "
                    "drift_reference (re-export it to monitor drift)", "drifting": False}
        latent = self._latent_report(self.latent.values(now))
        scores = {variant: self._score_report(variant, window.values(now)) for variant, window in self.scores.items()}
        drifting = latent["drifting"] or any(r["drifting"] for r in scores.values())
        return {**base, "reference": {"split": "validation", "examples": ref.examples, "mc_samples": ref.mc_samples},
                "status": "drifting" if drifting else "ok", "drifting": drifting, "latent": latent, "scores": scores}

    def _latent_report(self, mu: np.ndarray | None) -> dict[str, Any]:
        ref, s = self.reference, self.settings
        assert ref is not None, "reports need a reference"
        items = 0 if mu is None else len(mu)
        report: dict[str, Any] = {"items": items, "drifting": False, "active_units": int(ref.active.sum())}
        if mu is None or items < s.drift_min_items:
            return {**report, "status": f"collecting ({items} of {s.drift_min_items} items)"}
        units = np.nonzero(ref.active)[0] if ref.active.any() else np.arange(len(ref.mean))
        shift = np.abs(mu[:, units].mean(0) - ref.mean[units]) / np.maximum(ref.sd[units], 1e-12)  # (A,)
        ordered = np.sort(mu[:, units], axis=0)  # (n, A)
        distances = [ks_distance(ordered[:, i], ref.levels, ref.quantiles[j]) for i, j in enumerate(units)]
        p_min = min(ks_p_value(d, items, ref.examples) for d in distances)
        ks_p = min(1.0, p_min * len(units))  # Bonferroni over the units tested
        report.update(
            status="ok", max_mean_shift_sd=float(shift.max()), mean_shift_threshold_sd=s.drift_mean_shift_sd,
            mean_shift_sd={int(j): round(float(v), 4) for j, v in zip(units, shift)},
            ks={"max_distance": float(max(distances)), "min_distance": s.drift_ks_min_distance, "p_value": ks_p,
                "alpha": s.drift_ks_alpha, "correction": f"Bonferroni over {len(units)} units"},
        )
        ks_drift = ks_p < s.drift_ks_alpha and max(distances) >= s.drift_ks_min_distance
        report["drifting"] = bool(ks_drift or shift.max() > s.drift_mean_shift_sd)
        return report

    def _score_report(self, variant: str, scores: np.ndarray | None) -> dict[str, Any]:
        ref, s = self.reference, self.settings
        assert ref is not None, "reports need a reference"
        items = 0 if scores is None else len(scores)
        if scores is None or items < s.drift_min_items:
            return {"items": items, "drifting": False, "status": f"collecting ({items} of {s.drift_min_items} items)"}
        psi = population_stability(scores, ref.score_edges[variant], ref.score_fractions[variant])
        return {"items": items, "status": "ok", "psi": psi, "psi_threshold": s.drift_psi_threshold,
                "drifting": bool(psi > s.drift_psi_threshold)}


class DriftMonitor:
    """The windows of every model version the service has loaded (the latest MAX_TRACKED_VERSIONS)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: OrderedDict[tuple[str, str], ModelDrift] = OrderedDict()

    def track(self, ref: dict[str, str], manifest: dict[str, Any]) -> ModelDrift | None:
        """A fresh window for a model version being loaded (None when drift monitoring is off)."""
        if self.settings.drift_window_items == 0:
            return None
        key = (ref["name"], ref["version"])
        self._models.pop(key, None)
        self._models[key] = ModelDrift(ref, DriftReference.from_manifest(manifest), self.settings)
        while len(self._models) > MAX_TRACKED_VERSIONS:
            self._models.popitem(last=False)
        return self._models[key]

    def forget(self, ref: dict[str, str]) -> None:
        self._models.pop((ref["name"], ref["version"]), None)

    def reports(self) -> list[dict[str, Any]]:
        return [model.report() for model in list(self._models.values())]

    # prometheus_client custom collector: the gauges are computed at scrape time.
    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "version"]
        detected = GaugeMetricFamily("vaeserve_drift_detected", "1 when a model version's inputs drift from its "
                                     "reference (any signal over its threshold)", labels=labels)
        items = GaugeMetricFamily("vaeserve_drift_window_items", "Items in a drift window", labels=[*labels, "window"])
        shift = GaugeMetricFamily("vaeserve_drift_latent_mean_shift_sd", "Largest shift of a latent unit's mean, "
                                  "in reference standard deviations", labels=labels)
        ks = GaugeMetricFamily("vaeserve_drift_latent_ks_p_value", "Bonferroni-corrected KS p-value of the latent "
                               "means against the reference", labels=labels)
        psi = GaugeMetricFamily("vaeserve_drift_score_psi", "Population stability index of the scores",
                                labels=[*labels, "variant"])
        for report in self.reports():
            if report["reference"] is None:
                continue
            values = [report["model"]["name"], report["model"]["version"]]
            latent = report["latent"]
            detected.add_metric(values, float(report["drifting"]))
            items.add_metric([*values, "latent"], latent["items"])
            shift.add_metric(values, latent.get("max_mean_shift_sd", math.nan))
            ks.add_metric(values, latent["ks"]["p_value"] if "ks" in latent else math.nan)
            for variant, score in report["scores"].items():
                items.add_metric([*values, variant], score["items"])
                psi.add_metric([*values, variant], score.get("psi", math.nan))
        yield from (detected, items, shift, ks, psi)
