"""KServe v2 / Triton protocol: tritonclient, unchanged, gets the friendly endpoints' numbers."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from harness.servers import ServerProcess


@pytest.fixture()
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def test_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for name in ("encoder", "decoder", "scorer"):
        assert client.is_model_ready(name)
    meta = client.get_model_metadata("scorer")
    assert meta["versions"] == ["1"]
    assert {t["name"]: t["shape"] for t in meta["inputs"]} == {"x": [-1, 784], "eps": [-1, -1, 8]}
    assert {t["name"]: t["datatype"] for t in meta["outputs"]}["elbo_score"] == "FP64"


@pytest.mark.parametrize("binary", [False, True])
def test_encoder_via_tritonclient_equals_encode_endpoint(client, server: ServerProcess, test_images, binary: bool) -> None:  # type: ignore[no-untyped-def]
    x = test_images[:3]
    infer_input = triton.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("mu", "log_var")]
    result = client.infer("encoder", inputs=[infer_input], outputs=outputs)
    friendly = httpx.post(server.url + "/encode", json={"inputs": x.tolist()}).json()
    np.testing.assert_allclose(result.as_numpy("mu"), friendly["mu"], atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("log_var"), friendly["log_var"], atol=1e-6)


def test_scorer_via_tritonclient_equals_anomaly_score_endpoint(client, server: ServerProcess, test_images) -> None:  # type: ignore[no-untyped-def]
    x = test_images[:4]
    eps = np.random.default_rng(9).standard_normal((4, 16, 8), dtype=np.float32)  # what /anomaly-score draws for seed 9
    inputs = [triton.InferInput("x", [4, 784], "FP32"), triton.InferInput("eps", [4, 16, 8], "FP32")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(eps)
    result = client.infer("scorer", inputs=inputs)  # no outputs named: all come back binary
    friendly = httpx.post(server.url + "/anomaly-score", json={"inputs": x.tolist(), "seed": 9, "mc_samples": 16}).json()
    np.testing.assert_allclose(result.as_numpy("elbo_score"), [r["score"] for r in friendly["results"]], rtol=1e-9)
    assert result.as_numpy("feature_nll").shape == (4, 784)


def test_decoder_version_path_and_errors(client, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    z = np.zeros((2, 8), dtype=np.float32)
    infer_input = triton.InferInput("z", [2, 8], "FP32")
    infer_input.set_data_from_numpy(z)
    result = client.infer("decoder", inputs=[infer_input], model_version="1")
    friendly = httpx.post(server.url + "/interpolate", json={"z_start": [0.0] * 8, "z_end": [0.0] * 8, "steps": 2}).json()
    np.testing.assert_allclose(result.as_numpy("x_mean"), friendly["outputs"], atol=1e-6)
    with pytest.raises(InferenceServerException, match="no version"):
        client.infer("decoder", inputs=[infer_input], model_version="7")
    with pytest.raises(InferenceServerException, match="not found"):
        client.infer("nope", inputs=[infer_input])
    bad = triton.InferInput("z", [2, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="does not match"):
        client.infer("decoder", inputs=[bad])
    nan = triton.InferInput("z", [1, 8], "FP32")
    nan.set_data_from_numpy(np.full((1, 8), np.nan, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="NaN"):
        client.infer("decoder", inputs=[nan])


def test_npy_in_and_out_on_the_friendly_endpoints(server: ServerProcess, test_images) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    np.save(buffer, test_images[:3].reshape(3, 28, 28))
    response = httpx.post(server.url + "/anomaly-score?mc_samples=8&seed=2", content=buffer.getvalue(),
                          headers={"content-type": "application/x-npy", "accept": "application/x-npy"})
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    scores = np.load(io.BytesIO(response.content), allow_pickle=False)
    friendly = httpx.post(server.url + "/anomaly-score", json={"inputs": test_images[:3].tolist(), "mc_samples": 8,
                                                                "seed": 2}).json()
    np.testing.assert_allclose(scores, [r["score"] for r in friendly["results"]], rtol=1e-12)
    recon = httpx.post(server.url + "/reconstruct", content=buffer.getvalue(),
                       headers={"content-type": "application/x-npy", "accept": "application/x-npy"})
    assert np.load(io.BytesIO(recon.content)).shape == (3, 784)


def test_npy_object_arrays_are_refused_without_unpickling(server: ServerProcess) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    response = httpx.post(server.url + "/encode", content=buffer.getvalue(), headers={"content-type": "application/x-npy"})
    assert response.status_code == 422 and "the .npy array must be numeric, got dtype object" in response.json()["error"]


def test_the_model_name_the_index_lists_is_its_scorer_core_graph(client: triton.InferenceServerClient,
                                                                 test_images) -> None:  # type: ignore[no-untyped-def]
    [entry] = client.get_model_repository_index()
    name = entry["name"]
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta == {**client.get_model_metadata("tiny-vae.scorer_core"), "name": name}
    config = client.get_model_config(name)
    assert config["max_batch_size"] == 256 and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [784]},
                               {"name": "eps", "data_type": "TYPE_FP32", "dims": [-1, 8]}]
    outputs = {t["name"]: t for t in config["output"]}
    assert outputs["elbo_score"] == {"name": "elbo_score", "data_type": "TYPE_FP64", "dims": [1],
                                     "reshape": {"shape": []}}
    assert "knn_score" not in outputs and config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    inputs = [triton.InferInput("x", [2, 784], "FP32"), triton.InferInput("eps", [2, 16, 8], "FP32")]
    inputs[0].set_data_from_numpy(test_images[:2])
    inputs[1].set_data_from_numpy(np.random.default_rng(9).standard_normal((2, 16, 8), dtype=np.float32))
    by_model = client.infer(name, inputs=inputs).as_numpy("elbo_score")
    np.testing.assert_array_equal(by_model, client.infer("tiny-vae.scorer_core", inputs=inputs).as_numpy("elbo_score"))


def test_statistics_count_requests_items_and_batches_in_tritons_fields(client: triton.InferenceServerClient) -> None:
    before = client.get_inference_statistics("decoder")["model_stats"]
    z = triton.InferInput("z", [3, 8], "FP32")
    z.set_data_from_numpy(np.zeros((3, 8), dtype=np.float32))
    for _ in range(2):
        client.infer("decoder", inputs=[z])
    [stats] = client.get_inference_statistics("decoder")["model_stats"]
    assert stats["name"] == "decoder" and stats["version"] == "1" and stats["last_inference"] > 0
    count = lambda s, key: s["inference_stats"][key]["count"]  # noqa: E731
    assert count(stats, "success") - count(before[0], "success") >= 2  # the friendly endpoints share the graph
    assert stats["inference_count"] - before[0]["inference_count"] >= 6
    assert stats["execution_count"] >= 2 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    assert {"queue", "compute_input", "compute_output", "fail"} <= set(stats["inference_stats"])
    assert any(b["batch_size"] == 3 for b in stats["batch_stats"])
    every = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} >= {"tiny-vae.encoder", "tiny-vae.decoder", "tiny-vae.scorer_core"}
