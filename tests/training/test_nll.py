"""The NLL by the published protocol: the fast estimator equals the model's own IWAE bound for the
same noise, whatever its pass size, and `vaeserve evaluate` defaults to every test image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.losses import iwae_bound
from training.checkpoint import load_checkpoint
from training.evaluate import binarize_fixed
from training.nll import importance_weighted_nll, protocol_report


def _reference(model, x: np.ndarray, *, k: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """-IWAE bound from VAE.monte_carlo_terms, with image i's noise the i-th (k, D) draw of the generator."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.stack([torch.randn(k, model.config.latent_dim, generator=gen) for _ in range(len(x))])
    with torch.no_grad():
        terms = model.monte_carlo_terms(torch.from_numpy(x), eps, reduce_dtype=torch.float64)
    return (-iwae_bound(terms.log_weights)).numpy()


@pytest.mark.parametrize("prior", ["standard", "vampprior"])
def test_fast_estimate_equals_the_models_iwae_bound_for_the_same_noise(prior: str, tiny_run: Path,
                                                                       vampprior_run: Path, test_images) -> None:  # type: ignore[no-untyped-def]
    model, _ = load_checkpoint((tiny_run if prior == "standard" else vampprior_run) / "best.pt")
    x = binarize_fixed(test_images[:12], seed=0)
    want = _reference(model, x, k=50, seed=3)
    for draws_per_pass in (50, 120, 7):  # one image per pass, several, and one image split into blocks
        got = importance_weighted_nll(model, x, k=50, seed=3, draws_per_pass=draws_per_pass)
        np.testing.assert_allclose(got["nll"], want, rtol=1e-5, err_msg=f"draws_per_pass={draws_per_pass}")
        assert np.all(got["neg_elbo"] >= got["nll"])  # the ELBO (mean log w) is below the IWAE bound
    # Grey (non-binary) inputs take the general Bernoulli term: same estimator.
    np.testing.assert_allclose(importance_weighted_nll(model, test_images[:3], k=20, seed=1)["nll"],
                               _reference(model, test_images[:3], k=20, seed=1), rtol=1e-5)


def test_protocol_report_gives_the_standard_error_and_the_protocol(tiny_model, test_images) -> None:  # type: ignore[no-untyped-def]
    report = protocol_report(tiny_model, binarize_fixed(test_images, seed=0), k=8, examples=0, binarized=True)
    nll = importance_weighted_nll(tiny_model, binarize_fixed(test_images, seed=0), k=8, seed=1)["nll"]
    assert report["iwae_nll"] == pytest.approx(nll.mean())
    assert report["iwae_nll_se"] == pytest.approx(nll.std(ddof=1) / np.sqrt(32))
    assert report["nll_protocol"] == {**report["nll_protocol"], "k": 8, "images": 32, "of_test_images": 32,
                                      "binarization_seed": 0, "noise_seed": 1}


def test_evaluate_defaults_to_every_test_image(tiny_run: Path, tmp_path: Path) -> None:
    from vaeserve.cli import main

    out = tmp_path / "evaluation.json"
    assert main(["evaluate", "--checkpoint", str(tiny_run / "best.pt"), "--iwae-k", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["iwae_examples"] == report["test_examples"] == 10_000
    assert report["nll_protocol"]["images"] == 10_000 and report["nll_protocol"]["binarized"] is True
    assert report["iwae_nll"] > 0 and 0 < report["iwae_nll_se"] < 5


@pytest.mark.parametrize("value", ["-1", "some"])
def test_iwae_examples_must_be_a_count_or_all(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vaeserve.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate", "--iwae-examples", value])
    assert "--iwae-examples: must be 'all' or a count" in capsys.readouterr().err
