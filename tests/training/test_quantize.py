"""export --quantize int8: int8 graphs beside the float ones, their parity in the manifest, and a
refusal that leaves the output exactly as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from model.manifest import load_manifest
from training.quantize import NATS_SCORES, QuantizationRefused, export_with_int8, int8_file
from vaeserve.cli import main

GRAPHS = {"encoder", "decoder", "scorer", "scorer_core"}


def test_export_writes_int8_graphs_with_their_parity_in_the_manifest(int8_artifacts: Path) -> None:
    manifest = load_manifest(int8_artifacts)  # verifies every listed file's sha256, the int8 ones too
    int8 = manifest["quantization"]["int8"]
    assert {g: spec["onnx"] for g, spec in int8["graphs"].items()} == {g: int8_file(g) for g in GRAPHS}
    assert {int8_file(g) for g in GRAPHS} <= set(manifest["files"])
    parity = int8["parity"]
    assert parity["items"] == 2000 and parity["mc_samples"] == 16 and parity["split"] == "test (held-out)"
    for graph in ("scorer", "scorer_core"):
        for score in NATS_SCORES:
            figures = parity["scores"][graph][score]
            assert 0 < figures["p99"] <= figures["max"] and figures["p99"] <= int8["max_p99_nats"] == 0.5
        assert parity["scores"][graph]["kl"]["max"] == 0  # the encoder stays float inside the scorers
    assert parity["max_abs_diff"]["decoder"]["x_mean"] > 0 and parity["max_abs_diff"]["encoder"]["mu"] > 0
    ops = {n.op_type for n in onnx.load(str(int8_artifacts / int8_file("scorer_core"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Softplus" not in ops


def test_int8_scorer_answers_do_not_depend_on_the_rest_of_the_batch(int8_artifacts: Path, test_images) -> None:  # type: ignore[no-untyped-def]
    session = ort.InferenceSession(str(int8_artifacts / int8_file("scorer_core")))
    eps = np.random.default_rng(0).standard_normal((32, 16, 8), dtype=np.float32)
    together = session.run(["elbo_score"], {"x": test_images, "eps": eps})[0]
    alone = session.run(["elbo_score"], {"x": test_images[:2], "eps": eps[:2]})[0]
    np.testing.assert_allclose(alone, together[:2], atol=1e-6)  # static ranges: no batch statistics


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_refused_quantization_leaves_the_output_as_it_was(artifacts_dir: Path, tiny_run: Path,
                                                             tmp_path: Path) -> None:
    existing = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, existing)
    before = _snapshot(existing)
    code = main(["export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(existing), "--name", "tiny-vae",
                 "--version", "2", "--quantize", "int8", "--max-quantized-p99-nats", "0"])
    assert code == 2
    assert _snapshot(existing) == before  # not even the float graphs of the new export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]  # no staging folder left behind


def test_a_refused_version_never_appears_in_a_repository(artifacts_dir: Path, test_images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    version = tmp_path / "repository" / "tiny-vae" / "1"

    def export(folder: Path) -> None:  # the float export, as already written
        shutil.copytree(artifacts_dir, folder)

    with pytest.raises(QuantizationRefused, match="above the limit 0"):
        export_with_int8(version, export, calibration_x=test_images, heldout_x=test_images, heldout_split="test",
                         max_p99_nats=0.0)
    assert not (tmp_path / "repository").exists()  # neither version 1, its staging folder, nor the folders made for them
