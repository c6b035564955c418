"""VAESERVE_PRECISION=int8: a real server runs the int8 graphs, within their recorded parity of the
float server; a model exported without them is refused with a reason."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np

from harness.servers import start_server, wait_until_ready
from model.manifest import load_manifest


def test_int8_server_scores_within_the_manifest_parity_of_the_float_server(int8_artifacts: Path, tmp_path: Path,
                                                                           test_images) -> None:  # type: ignore[no-untyped-def]
    parity = load_manifest(int8_artifacts)["quantization"]["int8"]["parity"]
    # The first 8 held-out images with seed 0 get the noise parity chunk 0 was measured with.
    body = {"inputs": test_images[:8].tolist(), "mc_samples": 16, "seed": 0}
    scores = {}
    for precision in ("float32", "int8"):
        proc = start_server(int8_artifacts, tmp_path / precision, precision=precision)
        try:
            response = httpx.post(proc.url + "/anomaly-score", json=body)
            assert response.status_code == 200, response.text
            scores[precision] = np.array([r["score"] for r in response.json()["results"]])
            card = httpx.get(proc.url + "/model").json()
            assert card["precision"] == precision and sorted(card["quantization"]["int8"]["graphs"]) == [
                "decoder", "encoder", "scorer", "scorer_core"]
            assert httpx.get(proc.url + "/models").json()["precision"] == precision
        finally:
            proc.stop()
    delta = np.abs(scores["int8"] - scores["float32"])
    assert 0 < delta.max() <= parity["scores"]["scorer_core"]["elbo_score"]["max"] + 1e-6


def test_int8_precision_without_int8_graphs_is_not_ready_and_says_why(artifacts_dir: Path, tmp_path: Path) -> None:
    proc = start_server(artifacts_dir, tmp_path, wait_ready=False, precision="int8")
    try:
        wait_until_ready(proc, path="/healthz", timeout_s=60)
        for _ in range(200):
            ready = httpx.get(proc.url + "/readyz")
            if "loading" not in ready.json().get("error", ""):
                break
            time.sleep(0.05)
        assert ready.status_code == 503
        assert "no int8 graphs" in ready.json()["error"] and "--quantize int8" in ready.json()["error"]
    finally:
        proc.stop()


def test_int8_in_a_repository_serves_quantized_versions_and_fails_the_others(int8_artifacts: Path,
                                                                             artifacts_dir: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(int8_artifacts, repository / "quantized" / "1")
    shutil.copytree(artifacts_dir, repository / "float-only" / "1")
    proc = start_server(repository, tmp_path, wait_ready=False, model_repository=repository, precision="int8",
                        default_model="quantized")
    try:
        wait_until_ready(proc)
        score = httpx.post(proc.url + "/models/quantized/anomaly-score", json={"inputs": [[0.5] * 784]})
        assert score.status_code == 200 and httpx.get(proc.url + "/models/quantized").json()["precision"] == "int8"
        refused = httpx.post(proc.url + "/models/float-only/anomaly-score", json={"inputs": [[0.5] * 784]})
        assert refused.status_code == 503 and "no int8 graphs" in refused.json()["error"]
        versions = {m["name"]: m["versions"][0] for m in httpx.get(proc.url + "/models").json()["models"]}
        assert versions["float-only"]["state"] == "failed" and "no int8 graphs" in versions["float-only"]["error"]
    finally:
        proc.stop()
