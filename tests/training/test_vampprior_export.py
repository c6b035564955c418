"""A VampPrior model end to end on the training side: the flags, the refused free bits, the manifest's
prior and NLL protocol, and every exported graph (the sampler's too) equal to PyTorch within 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.manifest import load_manifest
from model.prior import mixture_sample
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def vamp_model(vampprior_run: Path):  # type: ignore[no-untyped-def]
    model, _ = load_checkpoint(vampprior_run / "best.pt")
    return model


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_the_checkpoint_holds_the_prior_and_its_learned_pseudo_inputs(vamp_model) -> None:  # type: ignore[no-untyped-def]
    assert vamp_model.config.prior == "vampprior" and vamp_model.config.pseudo_inputs == 20
    pseudo = vamp_model.prior.pseudo_inputs().detach()
    assert pseudo.shape == (20, 784) and 0 < pseudo.min() and pseudo.max() < 1


def test_manifest_records_the_prior_the_sampler_and_parity_within_1e_4(vampprior_artifacts: Path) -> None:
    manifest = load_manifest(vampprior_artifacts)
    assert manifest["prior"] == {"kind": "vampprior", "pseudo_inputs": 20}
    assert manifest["config"]["prior"] == "vampprior"
    graphs = {"encoder", "decoder", "scorer", "scorer_core", "sampler"}
    assert set(manifest["graphs"]) == graphs
    assert [i["name"] for i in manifest["graphs"]["sampler"]["inputs"]] == ["u", "noise"]
    for table in ("max_abs_diff", "max_scaled_diff"):
        assert set(manifest["parity"][table]) == graphs
        for name, graph in manifest["parity"][table].items():
            assert graph["onnxruntime"] <= 1e-4 and graph["torchscript"] <= 1e-4, name
    # evaluate ran before export (conftest): the NLL and its protocol travel into the manifest.
    metrics = manifest["metrics"]
    assert metrics["nll_protocol"]["k"] == 4 and metrics["nll_protocol"]["images"] == 200
    assert metrics["nll_protocol"]["binarization_seed"] == 0 and metrics["iwae_nll_se"] > 0


def test_onnx_scorer_equals_pytorch_with_the_mixture_prior_for_the_same_noise(vampprior_artifacts: Path, vamp_model,
                                                                               test_images) -> None:  # type: ignore[no-untyped-def]
    eps = np.random.default_rng(0).standard_normal((len(test_images), 6, 8), dtype=np.float32)
    out = _run(vampprior_artifacts / "scorer.onnx", {"x": test_images, "eps": eps})
    with torch.no_grad():  # the components recomputed from the pseudo-inputs, not the graph's baked copy
        terms = vamp_model.monte_carlo_terms(torch.from_numpy(test_images), torch.from_numpy(eps),
                                             reduce_dtype=torch.float64)
    recon = -terms.log_px_features.sum(-1).mean(1).numpy()
    for name, want in (("kl", terms.kl.numpy()), ("elbo_score", recon + terms.kl.numpy()),
                       ("iwae_score", -torch.logsumexp(terms.log_weights, 1).numpy() + np.log(6))):
        scaled = np.abs(out[name] - want) / np.maximum(1.0, np.abs(want))
        assert scaled.max() <= 1e-4, name
    assert np.all(out["kl"] > 0) and np.mean(out["iwae_score"]) <= np.mean(out["elbo_score"])


def test_onnx_sampler_draws_from_the_mixture_as_pytorch_does(vampprior_artifacts: Path, vamp_model) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    u, noise = rng.random(64, dtype=np.float32), rng.standard_normal((64, 8), dtype=np.float32)
    out = _run(vampprior_artifacts / "sampler.onnx", {"u": u, "noise": noise})
    with torch.no_grad():
        z = mixture_sample(torch.from_numpy(u), torch.from_numpy(noise), *vamp_model.prior_components())
        x_mean = vamp_model.generate(z)
    np.testing.assert_allclose(out["z"], z.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["x_mean"], x_mean.numpy(), atol=1e-5)


def test_free_bits_with_a_vampprior_is_refused_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vaeserve.cli import main

    code = main(["train", "--out", str(tmp_path), "--prior", "vampprior", "--free-bits", "0.1", "--max-steps", "1",
                 "--hidden", "16", "--latent-dim", "2"])
    assert code == 2
    assert "free_bits" in capsys.readouterr().err and not (tmp_path / "best.pt").exists()
