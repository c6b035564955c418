"""Export: both formats agree with PyTorch, the manifest is complete, and tampering is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.manifest import SCHEMA_VERSION, ArtifactError, load_manifest


def test_manifest_records_contract_parity_and_calibration(artifacts_dir: Path) -> None:
    manifest = load_manifest(artifacts_dir)
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["model"] == {**manifest["model"], "name": "tiny-vae", "version": "1"}
    assert manifest["input"]["shape"] == [1, 28, 28] and manifest["input"]["range"] == [0.0, 1.0]
    graphs = {"encoder", "decoder", "scorer", "scorer_core"}
    assert set(manifest["graphs"]) == graphs
    for table in ("max_abs_diff", "max_scaled_diff"):
        assert set(manifest["parity"][table]) == graphs
        for graph in manifest["parity"][table].values():
            assert graph["onnxruntime"] <= 1e-4 and graph["torchscript"] <= 1e-4
    assert manifest["parity"]["batch_sizes"] == [1, 7, 256]
    elbo = manifest["calibration"]["variants"]["elbo"]
    assert elbo["p50"] < elbo["p90"] < elbo["p99"] <= elbo["p99.9"]
    assert np.all(np.diff(elbo["quantiles"]) >= 0)
    assert set(manifest["files"]) == {f"{g}.{e}" for g in graphs for e in ("onnx", "pt")}
    assert len(manifest["latent"]["kl_per_dim"]) == 8


def test_onnx_scorer_equals_pytorch_negative_elbo_for_the_same_noise(artifacts_dir: Path, tiny_model, test_images) -> None:  # type: ignore[no-untyped-def]
    session = ort.InferenceSession(str(artifacts_dir / "scorer.onnx"))
    eps = np.random.default_rng(0).standard_normal((len(test_images), 4, 8), dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"x": test_images, "eps": eps})))
    recon, kl, elbo, iwae, feature_nll = (out[k] for k in ("reconstruction_nll", "kl", "elbo_score", "iwae_score",
                                                           "feature_nll"))
    with torch.no_grad():
        terms = tiny_model.monte_carlo_terms(torch.from_numpy(test_images), torch.from_numpy(eps))
        expected = (-terms.log_px_features.double().sum(-1).mean(1) + terms.kl_dims.double().sum(-1)).numpy()
    np.testing.assert_allclose(elbo, expected, rtol=1e-5)
    assert np.mean(iwae) <= np.mean(elbo)  # the IWAE bound is tighter
    np.testing.assert_allclose(feature_nll.sum(1), recon, rtol=1e-9)  # explanations sum to the reconstruction term
    np.testing.assert_allclose(recon + kl, elbo, rtol=1e-12)


def test_scorer_core_is_the_scorer_without_the_neighbour_outputs(artifacts_dir: Path, test_images) -> None:  # type: ignore[no-untyped-def]
    feeds = {"x": test_images, "eps": np.random.default_rng(1).standard_normal((len(test_images), 4, 8), dtype=np.float32)}
    outputs = {}
    for graph in ("scorer", "scorer_core"):
        session = ort.InferenceSession(str(artifacts_dir / f"{graph}.onnx"))
        outputs[graph] = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert set(outputs["scorer"]) - set(outputs["scorer_core"]) == {"knn_score", "elbo_knn_score"}
    for name, values in outputs["scorer_core"].items():
        np.testing.assert_allclose(values, outputs["scorer"][name], rtol=1e-6, err_msg=name)


def test_dynamic_batch_and_k_axes(artifacts_dir: Path) -> None:
    session = ort.InferenceSession(str(artifacts_dir / "scorer.onnx"))
    names = [o.name for o in session.get_outputs()]
    for batch, k in ((1, 1), (3, 64)):
        outputs = dict(zip(names, session.run(None, {"x": np.full((batch, 784), 0.5, np.float32),
                                                     "eps": np.zeros((batch, k, 8), np.float32)})))
        assert outputs["elbo_score"].shape == (batch,) and outputs["feature_nll"].shape == (batch, 784)


def test_corrupted_or_missing_files_and_wrong_schema_are_refused(artifacts_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(artifacts_dir, broken)
    with (broken / "decoder.onnx").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="decoder.onnx is corrupted"):
        load_manifest(broken)
    (broken / "decoder.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_manifest(broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        load_manifest(broken)
