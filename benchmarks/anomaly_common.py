"""Shared by the anomaly benchmarks: train with the real CLI, export, score with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.heads import SCORE_VARIANTS
from training.cli import main as vaeserve


def train_and_export(run_dir: Path, train_args: list[str]) -> Path:
    """`vaeserve train ...` then `vaeserve export`; returns the artifacts folder."""
    assert vaeserve(["train", "--out", str(run_dir), *train_args]) == 0
    artifacts = run_dir / "artifacts"
    assert vaeserve(["export", "--checkpoint", str(run_dir / "best.pt"), "--out", str(artifacts),
                     "--version", "bench"]) == 0
    return artifacts


def onnx_scores(artifacts: Path, x: np.ndarray, *, mc_samples: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Every score variant for x, computed by the exported scorer graph as the service runs it."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    session = ort.InferenceSession(str(artifacts / "scorer.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {v: [] for v in SCORE_VARIANTS}
    for start in range(0, len(x), 256):
        xb = x[start:start + 256].astype(np.float32)
        eps = rng.standard_normal((len(xb), mc_samples, manifest["config"]["latent_dim"]), dtype=np.float32)
        out = dict(zip(names, session.run(None, {"x": xb, "eps": eps})))
        for v in SCORE_VARIANTS:
            parts[v].append(out[f"{v}_score"])
    return {v: np.concatenate(p) for v, p in parts.items()}
