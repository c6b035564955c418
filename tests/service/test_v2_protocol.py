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
