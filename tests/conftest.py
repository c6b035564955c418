"""Shared fixtures: a tiny real model trained on real Fashion-MNIST once per session, exported,
and a real server on 127.0.0.1 serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness.servers import ServerProcess, start_server


def without_score_ids(answer: dict) -> dict:  # type: ignore[type-arg]
    """An /anomaly-score answer without its score_ids: each is signed with a nonce of its own, so two
    scorings of the same items differ in them and in nothing else."""
    return {**answer, "results": [{k: v for k, v in r.items() if k != "score_id"} for r in answer["results"]]}


def vaeserve(*args: str) -> None:
    """`vaeserve train|evaluate|export ...` in this process; it must succeed."""
    from vaeserve.cli import main

    assert main(list(args)) == 0, f"vaeserve {' '.join(args)} failed"


# fp32, not the CLI's default auto: the shared models must not depend on a timing of the machine.
TINY_TRAIN_ARGS = ["--hidden", "128", "--latent-dim", "8", "--epochs", "1", "--max-steps", "150",
                   "--batch-size", "128", "--seed", "0", "--precision", "fp32"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with best.pt of a tiny model trained a few steps on Fashion-MNIST."""
    out = tmp_path_factory.mktemp("run")
    vaeserve("train", "--out", str(out), *TINY_TRAIN_ARGS)
    return out


@pytest.fixture(scope="session")
def artifacts_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with its manifest (ONNX + TorchScript, parity-checked)."""
    out = tmp_path_factory.mktemp("artifacts")
    vaeserve("export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(out),
             "--name", "tiny-vae", "--version", "1")
    return out


@pytest.fixture(scope="session")
def int8_artifacts(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with its int8 graphs too (`export --quantize int8`)."""
    out = tmp_path_factory.mktemp("int8-artifacts") / "export"
    vaeserve("export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(out), "--name", "tiny-vae",
             "--version", "1", "--quantize", "int8")
    return out


# One class normal (trousers), a larger validation split: 1,800 calibration scores for p-values
# and the drift reference. Trained ~5 s, like the tiny model.
ONE_CLASS = 1
ONE_CLASS_TRAIN_ARGS = ["--normal-classes", str(ONE_CLASS), "--val-fraction", "0.3", "--hidden", "128",
                        "--latent-dim", "8", "--epochs", "5", "--max-steps", "150", "--batch-size", "128", "--seed", "0",
                        "--precision", "fp32"]


@pytest.fixture(scope="session")
def one_class_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on one Fashion-MNIST class only, exported (name one-class-vae, version 1)."""
    run, out = tmp_path_factory.mktemp("one-class-run"), tmp_path_factory.mktemp("one-class-artifacts")
    vaeserve("train", "--out", str(run), *ONE_CLASS_TRAIN_ARGS)
    vaeserve("export", "--checkpoint", str(run / "best.pt"), "--out", str(out), "--name", "one-class-vae",
             "--version", "1")
    return out


# A tiny VampPrior model (issue 17): 20 pseudo-inputs, trained ~5 s like the tiny model.
VAMPPRIOR_TRAIN_ARGS = [*TINY_TRAIN_ARGS, "--max-steps", "100", "--prior", "vampprior", "--pseudo-inputs", "20"]


@pytest.fixture(scope="session")
def vampprior_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vampprior-run")
    vaeserve("train", "--out", str(out), *VAMPPRIOR_TRAIN_ARGS)
    return out


@pytest.fixture(scope="session")
def vampprior_artifacts(vampprior_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VampPrior model evaluated (K=4 on 200 test images) and exported (name vamp-vae, version 1),
    its sampler graph included."""
    out = tmp_path_factory.mktemp("vampprior-artifacts")
    vaeserve("evaluate", "--checkpoint", str(vampprior_run / "best.pt"), "--iwae-k", "4",
             "--iwae-examples", "200")
    vaeserve("export", "--checkpoint", str(vampprior_run / "best.pt"), "--out", str(out),
             "--name", "vamp-vae", "--version", "1")
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_run: Path):  # type: ignore[no-untyped-def]
    from training.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_run / "best.pt")
    return model


@pytest.fixture(scope="session")
def test_images() -> np.ndarray:
    """32 real Fashion-MNIST test images, (32, 784) in [0, 1]."""
    from training.data import load_fashion_mnist

    return load_fashion_mnist().test_x[:32]


@pytest.fixture(scope="session")
def server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real uvicorn server serving the tiny model, shared by the session."""
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("logs"), batch_wait_timeout_s=0.002)
    yield proc
    proc.stop()
