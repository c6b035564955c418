"""`vaeserve.export_model` and `vaeserve export --module`: a model of your own exported, and the models
that cannot be served refused with a message naming the problem, the output left exactly as it was."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vaeserve
from model.adapter import ModelRefused
from model.manifest import load_manifest, sha256_file
from vaeserve.cli import main

D = 4


class TinyVAE(nn.Module):
    """A small good model: encode/decode methods, logits out (the CLI test imports it by name)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(784, 32), nn.ReLU())
        self.mu, self.log_var = nn.Linear(32, D), nn.Linear(32, D)
        self.dec = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 784))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(x)
        return self.mu(h), self.log_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    from training.data import load_fashion_mnist

    return load_fashion_mnist().val_x[:128]


def tree(root: Path) -> dict[str, str]:
    """Every path under root with a digest of its bytes: what 'exactly as it was' compares."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def assert_refused(model: nn.Module, items: np.ndarray, tmp_path: Path, match: str, **options: object) -> str:
    """Export to a repository that already holds a model and to an existing artifacts folder: both refused
    with `match` in the message, neither changed in any byte."""
    repository, out = tmp_path / "repository", tmp_path / "artifacts"
    (repository / "theirs" / "1").mkdir(parents=True)
    (repository / "theirs" / "1" / "manifest.json").write_text("{}")
    out.mkdir()
    (out / "manifest.json").write_text('{"old": true}')
    before = tree(tmp_path)
    kwargs = {"input_shape": (1, 28, 28), "likelihood": "bernoulli", "decoder_output": "logits", **options}
    messages = []
    for target in ({"repository": repository}, {"out": out}):
        with pytest.raises(ModelRefused, match=match) as refusal:
            vaeserve.export_model(model, name="mine", calibration=items, **target, **kwargs)  # type: ignore[arg-type]
        messages.append(str(refusal.value))
    assert tree(tmp_path) == before, "a refused export changed the output"
    return messages[0]


def test_a_model_without_encode_is_refused(items: np.ndarray, tmp_path: Path) -> None:
    class DecoderOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features, self.decoder = nn.Linear(784, 2 * D), nn.Linear(D, 784)

    message = assert_refused(DecoderOnly(), items, tmp_path, r"no way to encode: vaeserve expects encode\(x\)")
    assert "found submodules ['features', 'decoder']" in message


def test_a_wrong_latent_shape_is_refused(items: np.ndarray, tmp_path: Path) -> None:
    class HalfLogVar(TinyVAE):
        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mu, log_var = super().encode(x)
            return mu, log_var[:, :2]

    assert_refused(HalfLogVar(), items, tmp_path, r"mu has shape \(4, 4\) and log_var \(4, 2\).*\(batch, latent_dim\)")

    class OtherLatentSize(TinyVAE):
        def __init__(self) -> None:
            super().__init__()
            self.dec[0] = nn.Linear(D + 2, 32)

    assert_refused(OtherLatentSize(), items, tmp_path / "other",
                   r"decode\(z\) failed on z of shape \(8, 4\) \(the latent size of the encoder's mu\)")


def test_nan_outputs_are_refused(items: np.ndarray, tmp_path: Path) -> None:
    class LogOfLinear(TinyVAE):
        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.enc(x)
            return self.mu(h), torch.log(self.log_var(h))  # a log of a linear layer: NaN where it is negative

    assert_refused(LogOfLinear(), items, tmp_path, r"encode\(x\) gave NaN or infinite mu or log_var for \d+ of 128")


def test_probabilities_outside_0_1_are_refused(items: np.ndarray, tmp_path: Path) -> None:
    message = assert_refused(TinyVAE(), items, tmp_path, r"\"probabilities\" outside \[0, 1\]", decoder_output="probs")
    assert "decoder_output 'logits'" in message  # what to do about it


def test_probabilities_declared_as_logits_are_refused(items: np.ndarray, tmp_path: Path) -> None:
    class WithSigmoid(TinyVAE):
        def __init__(self) -> None:
            super().__init__()
            self.dec.append(nn.Sigmoid())

    assert_refused(WithSigmoid(), items, tmp_path, r"decoder_output is 'logits', but decode\(z\) returns the output "
                                                   r"of the nn.Sigmoid 'dec.3': those are probabilities")


def test_a_data_dependent_branch_is_refused(items: np.ndarray, tmp_path: Path) -> None:
    class Branching(TinyVAE):
        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.enc(x)
            if h.mean() > 0:  # a Python branch on data: a traced graph would keep one side only
                h = 2 * h
            return self.mu(h), self.log_var(h)

    message = assert_refused(Branching(), items, tmp_path, "encoder graph cannot be exported to ONNX: control flow "
                                                          "that depends on tensor values")
    assert "if h.mean() > 0:" in message and "test_own_model.py" in message


def test_export_leaves_the_users_module_as_it_was(items: np.ndarray, tmp_path: Path) -> None:
    class WithSigmoid(TinyVAE):
        def __init__(self) -> None:
            super().__init__()
            self.dec.append(nn.Sigmoid())

    model = WithSigmoid().train()
    weights = copy.deepcopy(model.state_dict())
    manifest = vaeserve.export_model(model, out=tmp_path / "artifacts", name="mine", input_shape=(784,),
                                     likelihood="bernoulli", decoder_output="probs", calibration=items)
    assert model.training and isinstance(model.dec[3], nn.Sigmoid)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert manifest["source"]["protocol"]["logits_before_sigmoid"] == "dec.3"
    assert load_manifest(tmp_path / "artifacts")["input"]["range"] == [0.0, 1.0]  # verified: every sha256 matches
    assert set(manifest["calibration"]["variants"]) == {"elbo", "iwae", "elbo_latent"}


def test_cli_exports_a_module_with_its_weights(items: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    weights, calibration = tmp_path / "weights.pt", tmp_path / "normal.npy"
    torch.save(TinyVAE().state_dict(), weights)
    np.save(calibration, items)
    common = ["export", "--module", "tests.training.test_own_model:TinyVAE", "--input-shape", "1", "28", "28",
              "--decoder-output", "logits", "--calibration", str(calibration), "--repository", str(tmp_path / "repo"),
              "--name", "tiny-own"]
    assert main([*common, "--weights", str(weights)]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = load_manifest(tmp_path / "repo" / "tiny-own" / "1")
    assert summary["artifacts"] == str(tmp_path / "repo" / "tiny-own" / "1") and summary["model"]["version"] == "1"
    assert manifest["source"]["factory"] == "tests.training.test_own_model:TinyVAE"
    assert manifest["source"]["weights_file"]["sha256"] == sha256_file(weights)
    assert max(v for g in manifest["parity"]["max_scaled_diff"].values() for v in g.values()) <= 1e-4

    torch.save(nn.Linear(3, 3).state_dict(), weights)  # weights of some other model
    assert main([*common, "--weights", str(weights)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vaeserve export: error: --weights:") and "Missing key(s)" in error
    assert sorted(p.name for p in (tmp_path / "repo" / "tiny-own").iterdir()) == ["1"]

