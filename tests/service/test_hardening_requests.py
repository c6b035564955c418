"""Client mistakes a probe of the running service turned into 500s, leaks or gaps (hardening findings
6 and 9), against a real server: each is a 4xx naming the field, no answer shows an object's repr,
the v2 path checks values as the JSON path does, and a wrong method on an admin route is a 405."""

from __future__ import annotations

import base64
import io
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.servers import ServerProcess, start_server

NPY = {"content-type": "application/x-npy"}
HEAP_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}|object at")


def infer(server: ServerProcess, graph: str, body: dict[str, Any], **headers: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{graph}/infer", json=body, headers=headers, timeout=30)


def tensor(name: str, values: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": list(values.shape), "data": values.reshape(-1).tolist(), **extra}


def npy_with_header(header: str, version: int = 1) -> bytes:
    """An .npy body whose header text is `header` (whatever it holds), then a few data bytes."""
    raw = header.encode("latin-1")
    length = struct.pack("<H", len(raw)) if version == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes([version, 0]) + length + raw + b"\0" * 16


X = np.full((2, 784), 0.5, dtype=np.float32)
PARAMETERS = {
    "parameters": lambda bad: {"inputs": [tensor("x", X)], "parameters": bad},
    "inputs[0].parameters": lambda bad: {"inputs": [tensor("x", X, parameters=bad)]},
    "outputs[0].parameters": lambda bad: {"inputs": [tensor("x", X)], "outputs": [{"name": "mu", "parameters": bad}]},
}


@pytest.mark.parametrize("bad", ["binary_data_output", ["binary_data", True]], ids=["string", "list"])
@pytest.mark.parametrize("field", list(PARAMETERS))
def test_v2_parameters_that_are_not_objects_are_a_422_naming_them(server: ServerProcess, field: str, bad: Any) -> None:
    response = infer(server, "encoder", PARAMETERS[field](bad))
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"{field}: must be a JSON object"), response.text


@pytest.mark.parametrize(("body", "field"), [
    ({"inputs": [tensor("x", X)], "outputs": 5}, "outputs:"),
    ({"inputs": [{**tensor("x", X), "name": ["x"]}]}, "inputs[0]:"),  # unhashable names: a TypeError before
    ({"inputs": [tensor("x", X)], "outputs": [{"name": {"mu": 1}}]}, "outputs[0]:"),
], ids=["outputs-number", "input-name-list", "output-name-object"])
def test_v2_outputs_and_names_of_the_wrong_type_are_a_422(server: ServerProcess, body: dict[str, Any],
                                                          field: str) -> None:
    response = infer(server, "encoder", body)
    assert response.status_code == 422 and response.json()["error"].startswith(field), response.text


@pytest.mark.parametrize("length", [b"\xb2", b"9" * 5000, b"-1", b""], ids=["superscript-two", "huge", "negative", "empty"])
def test_an_inference_header_length_that_is_not_ascii_digits_is_a_400(server: ServerProcess, length: bytes) -> None:
    body = b'{"inputs": []}'
    response = httpx.post(f"{server.url}/v2/models/encoder/infer", content=body,
                          headers={"content-type": "application/octet-stream",
                                   "inference-header-content-length": length}, timeout=30)
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1,",  # not a complete literal: tokenize.TokenError
    "(" * 3000,  # likewise, deeply open
    "-" * 5000 + "1",  # a parser that recurses past Python's limit: RecursionError
], ids=["incomplete", "open-parentheses", "deep-unary"])
@pytest.mark.parametrize("version", [1, 3])
def test_an_npy_header_that_is_not_a_literal_is_a_400_naming_the_field(server: ServerProcess, header: str,
                                                                       version: int) -> None:
    response = httpx.post(server.url + "/anomaly-score", content=npy_with_header(header, version), headers=NPY)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("inputs: "), response.text


@pytest.mark.parametrize("body", [
    npy_with_header("\xff" * 16),  # a bare name: literal_eval's message names the ast.Name object
    npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,) * 2}"),  # an ast.BinOp
    npy_with_header("lambda: 1"),
], ids=["name", "binop", "lambda"])
def test_npy_errors_never_show_an_object_repr(server: ServerProcess, body: bytes) -> None:
    response = httpx.post(server.url + "/anomaly-score", content=body, headers=NPY)
    assert response.status_code == 400, response.text
    assert not HEAP_ADDRESS.search(response.text), response.text


@pytest.mark.parametrize("raw", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40], ids=["text", "png-magic"])
def test_image_errors_never_show_an_object_repr(server: ServerProcess, raw: bytes) -> None:
    response = httpx.post(server.url + "/anomaly-score", json={"inputs": [base64.b64encode(raw).decode()]})
    assert response.status_code == 422, response.text
    assert not HEAP_ADDRESS.search(response.text), response.text


def test_v2_inputs_outside_the_manifests_range_are_refused_as_on_the_json_path(server: ServerProcess) -> None:
    x = np.full((3, 784), 0.5, dtype=np.float32)
    x[1, 7] = 1e30
    json_path = httpx.post(server.url + "/encode", json={"inputs": x.tolist()})
    assert json_path.status_code == 422 and "inputs[1]: values must be in [0, 1]" in json_path.json()["error"]
    for graph, extra in (("encoder", []), ("scorer", [tensor("eps", np.zeros((3, 2, 8), dtype=np.float32))])):
        response = infer(server, graph, {"inputs": [tensor("x", x), *extra]})
        assert response.status_code == 422, response.text
        assert response.json()["error"].startswith("x[1]: values must be in [0, 1]"), response.text


def test_v2_latents_beyond_the_json_paths_bound_are_refused(server: ServerProcess) -> None:
    z = np.zeros((2, 8), dtype=np.float32)
    z[1, 3] = 1e30
    json_path = httpx.post(server.url + "/interpolate", json={"z_start": z[1].tolist(), "z_end": z[0].tolist()})
    assert json_path.status_code == 422 and "within ±10000" in json_path.json()["error"]
    response = infer(server, "decoder", {"inputs": [tensor("z", z)]})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("z[1]: latent values must be within ±10000"), response.text
    z[1, 3] = -9999.0
    assert infer(server, "decoder", {"inputs": [tensor("z", z)]}).status_code == 200


@pytest.fixture(scope="module")
def admin_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("admin"), admin_api_keys='["admin-key"]')
    yield proc
    proc.stop()


@pytest.mark.parametrize("method", ["TRACE", "GET", "PUT", "DELETE"])
@pytest.mark.parametrize("path", ["/admin/reload", "/v2/repository/models/tiny-vae/load"])
def test_a_wrong_method_on_an_admin_route_is_a_405_like_any_route(admin_server: ServerProcess, server: ServerProcess,
                                                                  method: str, path: str) -> None:
    for proc in (admin_server, server):  # admin keys set (was 401) and admin routes off (was 403)
        response = httpx.request(method, proc.url + path)
        assert response.status_code == 405, (proc.url, response.text)
        assert response.json()["error_type"] == "method_not_allowed"
    assert httpx.post(admin_server.url + path).status_code == 401, "POST still needs the admin key"
    assert httpx.post(server.url + path).status_code == 403, "and admin routes stay off without admin keys"


def test_npy_answers_are_still_read_back(server: ServerProcess) -> None:
    """The .npy path the fixes touch still serves a valid body."""
    buffer = io.BytesIO()
    np.save(buffer, X)
    response = httpx.post(server.url + "/anomaly-score", content=buffer.getvalue(), headers=NPY)
    assert response.status_code == 200 and len(response.json()["results"]) == 2
