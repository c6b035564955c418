"""Many models in one service, against real servers: a repository of ten one-class models (one per
Fashion-MNIST class, each trained and exported for real), versions, canary and shadow traffic,
LRU unloading, rescans, and Triton's repository extension through tritonclient."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from scipy.stats import binom
from tritonclient.utils import InferenceServerException

from harness.repository import build_repository, model_name
from harness.servers import ServerProcess, start_server
from tests.conftest import without_score_ids

CLASSES = list(range(10))
NAMES = [model_name(c) for c in CLASSES]
ADMIN = {"authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root, runs = tmp_path_factory.mktemp("repository"), tmp_path_factory.mktemp("repository-runs")
    build_repository(root, runs, CLASSES)
    return root, runs


@pytest.fixture(scope="module")
def repository(built: tuple[Path, Path]) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def torch_models(built: tuple[Path, Path]) -> dict[str, torch.nn.Module]:
    from training.checkpoint import load_checkpoint

    return {name: load_checkpoint(built[1] / name / "best.pt")[0].eval() for name in NAMES}


@pytest.fixture(scope="module")
def repo_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(repository, tmp_path_factory.mktemp("repo-logs"), model_repository=repository,
                        admin_api_keys='["admin-key"]')
    yield proc
    proc.stop()


def metric(text: str, pattern: str) -> float:
    """Sum of the samples whose line matches the regular expression."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line))


def copy_version(source: Path, target: Path) -> None:
    """Copy a version folder the way an operator should: beside, then one atomic rename."""
    staging = target.parent / f".{target.name}.staging"
    shutil.copytree(source, staging)
    staging.rename(target)


def test_models_lists_every_model_and_unprefixed_routes_need_a_default(repo_server: ServerProcess) -> None:
    listing = httpx.get(repo_server.url + "/models").json()
    assert [m["name"] for m in listing["models"]] == NAMES and listing["default_model"] is None
    for m in listing["models"]:
        assert m["default_version"] == "1" and m["policy"]["serve"] == "latest"
        assert m["versions"] == [{"version": "1", "state": "ready", "ready": True, "error": None,
                                  "path": m["versions"][0]["path"], "traffic": 1.0,
                                  "memory_bytes": m["versions"][0]["memory_bytes"]}]
        assert m["versions"][0]["memory_bytes"] > 0  # what loading it added to the process (measured)
    refused = httpx.post(repo_server.url + "/encode", json={"inputs": [[0.5] * 784]})
    assert refused.status_code == 404 and "VAESERVE_DEFAULT_MODEL" in refused.json()["error"]
    assert all(name in refused.json()["error"] for name in NAMES)


def test_unknown_model_or_version_is_404_naming_what_exists(repo_server: ServerProcess) -> None:
    url = repo_server.url
    for path in ("/models/nope/encode", "/models/nope/versions/1/encode", "/models/nope"):
        r = httpx.post(url + path, json={"inputs": [[0.5] * 784]}) if "encode" in path else httpx.get(url + path)
        assert r.status_code == 404 and "'nope' not found" in r.json()["error"] and "class-9" in r.json()["error"], r.text
    for r in (httpx.post(url + "/models/class-2/versions/7/encode", json={"inputs": [[0.5] * 784]}),
              httpx.post(url + "/models/class-2/encode", json={"inputs": [[0.5] * 784]}, headers={"x-model-version": "7"}),
              httpx.get(url + "/v2/models/class-2.encoder/versions/7")):
        assert r.status_code == 404 and "no version '7'" in r.json()["error"] and "['1']" in r.json()["error"], r.text
    missing_graph = httpx.get(url + "/v2/models/class-2.nograph")
    assert missing_graph.status_code == 404 and "class-2.encoder" in missing_graph.json()["error"]


def test_concurrent_requests_to_all_ten_models_equal_their_own_pytorch_model(
        repo_server: ServerProcess, torch_models: dict[str, torch.nn.Module], test_images: np.ndarray) -> None:
    x = test_images[:3]
    eps = np.random.default_rng(5).standard_normal((3, 4, 4), dtype=np.float32)  # what seed 5 draws, K=4, D=4
    z = np.random.default_rng(3).standard_normal((2, 4), dtype=np.float32)

    async def everything(client: httpx.AsyncClient, name: str) -> dict[str, dict]:  # type: ignore[type-arg]
        base = f"/models/{name}"
        calls = {
            "encode": client.post(base + "/encode", json={"inputs": x.tolist()}),
            "reconstruct": client.post(f"{base}/versions/1/reconstruct", json={"inputs": x.tolist()}),
            "sample": client.post(base + "/sample", json={"n": 2, "seed": 3}),
            "interpolate": client.post(base + "/interpolate", json={"z_start": z[0].tolist(), "z_end": z[1].tolist(),
                                                                    "steps": 3}),
            "score": client.post(base + "/anomaly-score", json={"inputs": x.tolist(), "mc_samples": 4, "seed": 5}),
            "v2": client.post(f"/v2/models/{name}.encoder/infer", json={"inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}),
        }
        responses = await asyncio.gather(*calls.values())
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return {k: r.json() for k, r in zip(calls, responses)}

    async def scenario() -> dict[str, dict]:  # type: ignore[type-arg]
        async with httpx.AsyncClient(base_url=repo_server.url, timeout=60) as client:
            results = await asyncio.gather(*(everything(client, name) for name in NAMES))
        return dict(zip(NAMES, results))

    answers = asyncio.run(scenario())
    for name, model in torch_models.items():
        got = answers[name]
        for key in ("encode", "reconstruct", "sample", "interpolate", "score"):
            assert got[key]["model"] == {"name": name, "version": "1"}, (name, key)
        assert got["v2"]["model_name"] == f"{name}.encoder" and got["v2"]["model_version"] == "1"
        with torch.no_grad():
            mu, _ = model.encoder(torch.from_numpy(x))
            terms = model.monte_carlo_terms(torch.from_numpy(x), torch.from_numpy(eps))
            latents = np.linspace(0, 1, 3, dtype=np.float32)[:, None] * (z[1] - z[0]) + z[0]
            expected = {"encode": mu.numpy(), "reconstruct": model.reconstruct(torch.from_numpy(x)).numpy(),
                        "sample": model.generate(torch.from_numpy(z)).numpy(),
                        "interpolate": model.generate(torch.from_numpy(latents)).numpy()}
        np.testing.assert_allclose(got["encode"]["mu"], expected["encode"], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(got["reconstruct"]["reconstructions"]).reshape(3, -1),
                                   expected["reconstruct"], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["sample"]["samples"], expected["sample"], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["interpolate"]["outputs"], expected["interpolate"], atol=1e-5, err_msg=name)
        elbo = -terms.log_px_features.double().sum(-1).mean(1).numpy() + terms.kl_dims.double().sum(-1).numpy()
        np.testing.assert_allclose([r["score"] for r in got["score"]["results"]], elbo, rtol=1e-5, err_msg=name)
        mu_v2 = next(o for o in got["v2"]["outputs"] if o["name"] == "mu")
        np.testing.assert_allclose(np.reshape(mu_v2["data"], mu_v2["shape"]), expected["encode"], atol=1e-5)
    # The ten models differ: a model answers with its own numbers, not its neighbour's.
    assert not np.allclose(answers["class-0"]["encode"]["mu"], answers["class-1"]["encode"]["mu"], atol=1e-3)
    text = httpx.get(repo_server.url + "/metrics").text
    assert metric(text, r'vaeserve_batch_size_items_count\{graph="encoder",model="class-7",version="1"\}') > 0


def test_tritonclient_lists_loads_and_unloads_models(repo_server: ServerProcess, test_images: np.ndarray) -> None:
    client = triton.InferenceServerClient(url=repo_server.url.removeprefix("http://"))
    index = client.get_model_repository_index()
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == [(n, "1", "READY") for n in NAMES]
    assert client.is_model_ready("class-4.encoder")
    x = triton.InferInput("x", [1, 784], "FP32")
    x.set_data_from_numpy(test_images[:1])
    with pytest.raises(InferenceServerException, match="401|403|API key"):
        client.unload_model("class-4")  # without the admin key
    client.unload_model("class-4", headers=ADMIN)
    states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert states["class-4"] == "UNAVAILABLE" and states["class-5"] == "READY"
    assert not client.is_model_ready("class-4.encoder")
    with pytest.raises(InferenceServerException, match="unloaded"):
        client.infer("class-4.encoder", inputs=[x])
    assert client.infer("class-5.encoder", inputs=[x]).as_numpy("mu").shape == (1, 4)
    client.load_model("class-4", headers=ADMIN)
    assert client.is_model_ready("class-4.encoder")
    assert client.infer("class-4.encoder", inputs=[x]).as_numpy("mu").shape == (1, 4)


def test_every_name_the_index_lists_gets_metadata_config_and_answers(repo_server: ServerProcess,
                                                                    test_images: np.ndarray) -> None:
    """What a tritonclient user does: list, then describe and call each name listed."""
    client = triton.InferenceServerClient(url=repo_server.url.removeprefix("http://"))
    names = [m["name"] for m in client.get_model_repository_index()]
    assert sorted(names) == NAMES
    noise = np.random.default_rng(3).standard_normal((2, 16, 4), dtype=np.float32)
    for name in names:
        meta, config = client.get_model_metadata(name), client.get_model_config(name)
        assert client.is_model_ready(name) and config["name"] == name == meta["name"]
        assert [(t["name"], [-1, *t["dims"]]) for t in config["input"]] == [(t["name"], t["shape"]) for t in meta["inputs"]]
        inputs = []
        for tensor, data in zip(meta["inputs"], (test_images[:2], noise)):
            inputs.append(triton.InferInput(tensor["name"], list(data.shape), tensor["datatype"]))
            inputs[-1].set_data_from_numpy(data)
        result = client.infer(name, inputs=inputs)
        assert result.as_numpy("elbo_score").shape == (2,)
        assert {o["name"] for o in result.get_response()["outputs"]} == {t["name"] for t in meta["outputs"]}
        [stats] = client.get_inference_statistics(name)["model_stats"]
        assert stats["inference_stats"]["success"]["count"] >= 1


def test_a_memory_budget_keeps_the_loaded_versions_within_it(repository: Path, tmp_path: Path) -> None:
    """VAESERVE_MAX_LOADED_BYTES of 1: each load unloads the idle others; /models and the metrics
    report what each loaded version measured."""
    proc = start_server(repository, tmp_path, model_repository=repository, preload="none", max_loaded_bytes=1)
    try:
        for name in NAMES[:3]:
            assert httpx.post(proc.url + f"/models/{name}/encode", json={"inputs": [[0.5] * 784]}).status_code == 200
        listing = httpx.get(proc.url + "/models").json()
        loaded = {m["name"]: m["versions"][0]["memory_bytes"] for m in listing["models"] if m["versions"][0]["ready"]}
        assert list(loaded) == [NAMES[2]] and loaded[NAMES[2]] > 0, loaded
        assert listing["max_loaded_bytes"] == 1 and listing["loaded_bytes"] == loaded[NAMES[2]]
        text = httpx.get(proc.url + "/metrics").text
        assert metric(text, r'vaeserve_model_unloads_total\{reason="lru"\}') == 2
        assert metric(text, rf'vaeserve_model_memory_bytes\{{model="{NAMES[2]}"') == loaded[NAMES[2]]
    finally:
        proc.stop()


def test_a_broken_version_is_refused_and_reported_while_the_others_serve(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for name in ("class-0", "class-1", "class-2"):
        shutil.copytree(repository / name, root / name)
    with (root / "class-1" / "1" / "encoder.onnx").open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\xff\xfe\xfd")
    proc = start_server(root, tmp_path, model_repository=root)
    try:
        listing = {m["name"]: m for m in httpx.get(proc.url + "/models").json()["models"]}
        assert listing["class-1"]["versions"][0]["state"] == "failed"
        assert "encoder.onnx is corrupted" in listing["class-1"]["versions"][0]["error"]
        refused = httpx.post(proc.url + "/models/class-1/encode", json={"inputs": [[0.5] * 784]})
        assert refused.status_code == 503 and "encoder.onnx is corrupted" in refused.json()["error"]
        assert "retry-after" in refused.headers
        for name in ("class-0", "class-2"):
            assert httpx.post(proc.url + f"/models/{name}/encode", json={"inputs": [[0.5] * 784]}).status_code == 200
        assert httpx.get(proc.url + "/readyz").status_code == 200, "no default model: the healthy models serve"
    finally:
        proc.stop()


def test_lru_unloading_under_a_random_model_load_answers_only_200_or_503(repository: Path, tmp_path: Path) -> None:
    proc = start_server(repository, tmp_path, model_repository=repository, max_loaded_models=3, preload="none")
    rng = random.Random(0)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            async def worker() -> list[httpx.Response]:
                return [await client.post(f"/models/{rng.choice(NAMES)}/anomaly-score",
                                          json={"inputs": [[0.5] * 784], "mc_samples": 1}) for _ in range(25)]
            return [r for rs in await asyncio.gather(*(worker() for _ in range(16))) for r in rs]

    try:
        responses = asyncio.run(scenario())
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 503} and 200 in statuses, statuses
        assert all("retry-after" in r.headers for r in responses if r.status_code == 503)
        for r in responses:
            if r.status_code == 200:
                assert r.json()["model"]["name"] in NAMES
        time.sleep(0.5)  # let the last evicted versions drain
        text = httpx.get(proc.url + "/metrics").text
        assert metric(text, r'vaeserve_model_unloads_total\{reason="lru"\}') > 0
        assert metric(text, r"vaeserve_models_loaded ") <= 3
        loaded = [m for m in httpx.get(proc.url + "/models").json()["models"] if m["versions"][0]["ready"]]
        assert 1 <= len(loaded) <= 3
    finally:
        proc.stop()


@pytest.mark.parametrize("max_loaded_models", [0, 1], ids=["no-limit", "at-the-limit"])
def test_a_new_version_dropped_in_is_served_after_sighup_without_a_failed_request(repository: Path,
                                                                                   tmp_path: Path,
                                                                                   max_loaded_models: int) -> None:
    """At the limit too: the new version loads beside the serving one instead of evicting it first."""
    root = tmp_path / "repo"
    copy_version(repository / "class-0" / "1", root / "class-0" / "1")
    proc = start_server(root, tmp_path, model_repository=root, default_model="class-0",
                        max_loaded_models=max_loaded_models)

    async def scenario() -> tuple[list[int], list[str]]:
        statuses, versions = [], []
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            async def load() -> None:
                while not stop.is_set():
                    r = await client.post("/encode", json={"inputs": [[0.5] * 784]})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.append(r.json()["model"]["version"])

            workers = [asyncio.create_task(load()) for _ in range(8)]
            await asyncio.sleep(0.5)
            copy_version(repository / "class-3" / "1", root / "class-0" / "2")  # other weights, as version 2
            proc.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while (not versions or versions[-1] != "2") and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*workers)
        return statuses, versions

    try:
        statuses, versions = asyncio.run(scenario())
        assert len(statuses) > 50 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert versions[0] == "1" and versions[-1] == "2"
        listing = httpx.get(proc.url + "/models").json()["models"][0]
        assert listing["default_version"] == "2" and [v["version"] for v in listing["versions"]] == ["2"]
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def policy_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`canaried`: version 2 serves, version 1 gets a 10% canary; `shadowed`: version 2 serves and
    every request is also scored by version 1 in the shadow."""
    root = tmp_path_factory.mktemp("policies")
    for name, policy in (("canaried", {"canary": {"1": 0.1}}),
                         ("shadowed", {"serve": ["2"], "shadow": {"version": "1", "fraction": 1.0}})):
        copy_version(repository / "class-0" / "1", root / name / "1")
        copy_version(repository / "class-5" / "1", root / name / "2")
        (root / name / "policy.json").write_text(json.dumps(policy))
    proc = start_server(root, tmp_path_factory.mktemp("policy-logs"), model_repository=root)
    yield proc
    proc.stop()


def test_a_canary_at_weight_0_1_gets_its_binomial_share(policy_server: ServerProcess) -> None:
    n = 2000

    async def scenario() -> list[str]:
        async with httpx.AsyncClient(base_url=policy_server.url, timeout=30) as client:
            async def worker(count: int) -> list[str]:
                return [(await client.post("/models/canaried/sample", json={"n": 1})).json()["model"]["version"]
                        for _ in range(count)]
            return [v for vs in await asyncio.gather(*(worker(n // 16) for _ in range(16))) for v in vs]

    versions = asyncio.run(scenario())
    low, high = binom.interval(0.99, n, 0.1)
    assert len(versions) == n and set(versions) == {"1", "2"}
    assert low <= versions.count("1") <= high, (versions.count("1"), low, high)
    pinned = httpx.post(policy_server.url + "/models/canaried/sample", json={"n": 1}, headers={"x-model-version": "1"})
    assert pinned.json()["model"]["version"] == "1", "a pinned request skips the canary draw"
    listing = {m["name"]: m for m in httpx.get(policy_server.url + "/models").json()["models"]}
    assert {v["version"]: v["traffic"] for v in listing["canaried"]["versions"]} == {"1": 0.1, "2": 0.9}


def test_shadow_traffic_never_changes_an_answer_and_shows_in_metrics(policy_server: ServerProcess,
                                                                     test_images: np.ndarray) -> None:
    url = policy_server.url
    body = {"inputs": test_images[:4].tolist(), "mc_samples": 2, "seed": 1}
    served = [httpx.post(url + "/models/shadowed/anomaly-score", json=body).json() for _ in range(10)]
    direct = httpx.post(url + "/models/shadowed/versions/2/anomaly-score", json=body).json()
    other = httpx.post(url + "/models/shadowed/versions/1/anomaly-score", json=body).json()
    for answer in served:
        assert answer["model"] == {"name": "shadowed", "version": "2"}
        assert without_score_ids(answer)["results"] == without_score_ids(direct)["results"]
    assert [r["score"] for r in other["results"]] != [r["score"] for r in direct["results"]]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics").text
        if metric(text, r'vaeserve_shadow_requests_total\{model="shadowed",outcome="computed",version="1"\}') >= 5:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("shadow requests were not computed:\n" + "\n".join(
            line for line in text.splitlines() if "shadow" in line))
    assert metric(text, r'vaeserve_shadow_score_nats_count\{model="shadowed",version="1"\}') >= 20
    assert metric(text, r'vaeserve_shadow_score_difference_nats_sum\{model="shadowed",version="1"\}') > 0
