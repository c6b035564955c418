"""Shared by the anomaly benchmarks: train with the real CLI, export, score with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.repository import next_version, version_dir
from training.export import onnx_variant_scores
from vaeserve.cli import main as vaeserve


def one_thread() -> None:
    """Process-pool initializer: one CPU thread per worker, so parallel jobs do not oversubscribe."""
    import torch

    torch.set_num_threads(1)


def train_and_export(run_dir: Path, train_args: list[str], *, repository: Path | None = None,
                     name: str = "bench", export_args: tuple[str, ...] = ()) -> Path:
    """`vaeserve train ...` then `vaeserve export ...export_args` (into a model repository as `name`'s
    next version when one is given); returns the artifacts folder."""
    assert vaeserve(["train", "--out", str(run_dir), *train_args]) == 0
    if repository is None:
        return export(run_dir / "best.pt", run_dir / "artifacts", export_args)
    version = next_version(repository, name)
    assert vaeserve(["export", "--checkpoint", str(run_dir / "best.pt"), "--repository", str(repository),
                     "--name", name, "--version", version, *export_args]) == 0
    return version_dir(repository, name, version)


def export(checkpoint: Path, artifacts: Path, export_args: tuple[str, ...] = ()) -> Path:
    """`vaeserve export` of one checkpoint into artifacts (version "bench"); returns artifacts."""
    assert vaeserve(["export", "--checkpoint", str(checkpoint), "--out", str(artifacts), "--version", "bench",
                     *export_args]) == 0
    return artifacts


def onnx_scores(artifacts: Path, x: np.ndarray, *, mc_samples: int = 16, seed: int = 0,
                precision: str = "float32") -> dict[str, np.ndarray]:
    """Every score variant for x, computed by the exported scorer graph (float32, or its int8 twin of
    `export --quantize int8`) as the service runs it."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    graph = manifest["quantization"][precision]["graphs"]["scorer"]["onnx"] if precision != "float32" else "scorer.onnx"
    return onnx_variant_scores(artifacts / graph, x, latent_dim=manifest["config"]["latent_dim"],
                               mc_samples=mc_samples, seed=seed)
