"""The Python client (service/client/) against real servers: every method gives the JSON API's
numbers, error answers become typed exceptions with the service's message, and 429/503 are retried
after Retry-After until the service has room."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.servers import ServerProcess, free_port, start_server
from service.client import (
    AsyncVAEClient,
    InvalidInputError,
    ModelRef,
    NotFoundError,
    OverloadedError,
    VAEClient,
    VAEConnectionError,
)


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(server.url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def close(actual: np.ndarray, expected: Any) -> None:
    # .npy in vs JSON in: the same float32 inputs; answers differ only in the JSON round trip of floats
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=1e-6, atol=1e-6)


def test_every_method_gives_the_json_apis_numbers(server: ServerProcess, test_images: np.ndarray) -> None:
    x = test_images[:6]
    with VAEClient(server.url) as client:
        assert client.health() and client.ready()
        assert client.model_card() == httpx.get(server.url + "/model").json()

        encoding = client.encode(x, sample=True, seed=7)
        ref = post(server, "/encode", {"inputs": x.tolist(), "sample": True, "seed": 7})
        close(encoding.mu, ref["mu"]), close(encoding.log_var, ref["log_var"]), close(encoding.z, ref["z"])
        assert encoding.model == ModelRef("tiny-vae", "1") and encoding.mu.shape == (6, 8)

        reconstruction = client.reconstruct(x)  # answered as .npy, the model in headers
        close(reconstruction.x, post(server, "/reconstruct", {"inputs": x.tolist()})["reconstructions"])
        assert reconstruction.model == ModelRef("tiny-vae", "1")

        samples = client.sample(5, seed=3, temperature=0.7)
        ref = post(server, "/sample", {"n": 5, "seed": 3, "temperature": 0.7})
        close(samples.samples, ref["samples"]), close(samples.latents, ref["latents"])

        path = client.interpolate(x[0], x[1], steps=4, method="slerp")
        ref = post(server, "/interpolate", {"start": x[0].tolist(), "end": x[1].tolist(), "steps": 4, "method": "slerp"})
        close(path.latents, ref["latents"]), close(path.outputs, ref["outputs"])
        latent_path = client.interpolate(z_start=encoding.mu[0], z_end=encoding.mu[1], steps=3)
        close(latent_path.latents[[0, -1]], encoding.mu[:2])

        scores = client.anomaly_score(x, mc_samples=8, seed=5, target_fpr=0.05, explain=True)
        ref = post(server, "/anomaly-score", {"inputs": x.tolist(), "mc_samples": 8, "seed": 5, "target_fpr": 0.05,
                                              "explain": True})
        for name in ("score", "reconstruction_nll", "kl", "percentile", "p_value", "threshold"):
            close(getattr(scores, name), [r[name] for r in ref["results"]])
        close(scores.feature_nll, [r["feature_nll"] for r in ref["results"]])
        assert scores.is_anomaly.tolist() == [r["is_anomaly"] for r in ref["results"]]
        assert (len(scores), scores.variant, scores.mc_samples, scores.seed) == (6, "elbo", 8, 5)

        one = client.anomaly_score(x[0], mc_samples=8, seed=5)  # one item: a batch of one, the first noise row
        assert len(one) == 1 and one.feature_nll is None
        close(one.score, scores.score[:1])
        assert client.retries == 0


def test_fdr_flags_by_benjamini_hochberg_as_the_api_does(server: ServerProcess, test_images: np.ndarray) -> None:
    x = np.concatenate([test_images[:6], np.ones((2, 784), dtype=np.float32)])  # two all-white images: outliers
    ref = post(server, "/anomaly-score", {"inputs": x.tolist(), "seed": 2, "fdr": 0.2})
    with VAEClient(server.url) as client:
        scores = client.anomaly_score(x, seed=2, fdr=0.2)

    async def run() -> Any:
        async with AsyncVAEClient(server.url) as client:
            return await client.anomaly_score(x, seed=2, fdr=0.2)

    for got in (scores, asyncio.run(run())):
        close(got.p_value, [r["p_value"] for r in ref["results"]])
        assert got.is_anomaly.tolist() == [r["is_anomaly"] for r in ref["results"]] and got.is_anomaly[-2:].all()
        assert (got.fdr, got.p_value_cutoff, got.p_value_method) == (0.2, ref["p_value_cutoff"], "conformal")
        close(got.threshold, [r["threshold"] for r in ref["results"]])  # the lowest flagged score
    with VAEClient(server.url, max_retries=0) as client, pytest.raises(InvalidInputError, match="fdr"):
        client.anomaly_score(x, fdr=0.2, target_fpr=0.05)


def test_async_client_gives_the_same_answers_concurrently(server: ServerProcess, test_images: np.ndarray) -> None:
    x = test_images[:4]
    with VAEClient(server.url) as client:
        expected = [client.anomaly_score(x, seed=seed).score for seed in range(8)]
        encoding, card = client.encode(x), client.model_card()

    async def run() -> tuple[list[Any], Any, Any, bool]:
        async with AsyncVAEClient(server.url) as client:
            scores = await asyncio.gather(*(client.anomaly_score(x, seed=seed) for seed in range(8)))
            return list(scores), await client.encode(x), await client.model_card(), await client.ready()

    scores, async_encoding, async_card, ready = asyncio.run(run())
    for got, want in zip(scores, expected):
        np.testing.assert_array_equal(got.score, want)
    np.testing.assert_array_equal(async_encoding.mu, encoding.mu)
    assert async_card == card and ready


def test_error_answers_raise_typed_exceptions_with_the_services_message(server: ServerProcess,
                                                                        test_images: np.ndarray) -> None:
    x = test_images[:3]
    with VAEClient(server.url, max_retries=0) as client:
        with pytest.raises(InvalidInputError) as caught:
            client.anomaly_score(x * 2)
        error = caught.value
        assert (error.status_code, error.error_type) == (422, "invalid_input")
        assert error.error.startswith("inputs[0]: values must be in [0, 1]")
        with pytest.raises(InvalidInputError, match="mc_samples"):
            client.anomaly_score(x, mc_samples=0)
        with pytest.raises(InvalidInputError, match="each item must have shape"):
            client.encode(np.zeros((2, 5), dtype=np.float32))
        with pytest.raises(NotFoundError) as missing:
            client.anomaly_score(x, model="no-such-model")
        assert missing.value.error_type == "not_found" and "no-such-model" in missing.value.error
        with pytest.raises(ValueError, match="version: give model= too"):
            client.encode(x, version="1")
        with pytest.raises(ValueError, match="numeric"):
            client.encode(np.array([["a"] * 784]))
    with VAEClient(f"http://127.0.0.1:{free_port()}", max_retries=2, backoff_s=0.01) as nobody:
        with pytest.raises(VAEConnectionError, match="ConnectError"):
            nobody.sample(1)
        assert nobody.retries == 2


def test_model_and_version_arguments_address_the_models_routes(server: ServerProcess, test_images: np.ndarray) -> None:
    with VAEClient(server.url) as client:
        default = client.anomaly_score(test_images[:3], seed=1)
        named = client.anomaly_score(test_images[:3], seed=1, model="tiny-vae")
        pinned = client.anomaly_score(test_images[:3], seed=1, model="tiny-vae", version="1")
        np.testing.assert_array_equal(named.score, default.score)
        np.testing.assert_array_equal(pinned.score, default.score)
        assert client.model_card(model="tiny-vae", version="1")["model"] == {"name": "tiny-vae", "version": "1"}
        assert client.sample(2, model="tiny-vae").model == ModelRef("tiny-vae", "1")


HEAVY_ITEMS, HEAVY_MC_SAMPLES, CONCURRENT = 8, 256, 16


def rejections(server: ServerProcess) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vaeserve_rejections_total"))


def test_retries_honour_retry_after_until_a_full_queue_has_room(artifacts_dir: Path, tmp_path: Path,
                                                                test_images: np.ndarray) -> None:
    """A queue that holds one request: 16 concurrent heavy requests without retries are refused (429),
    with retries every one is answered, with the scores it gets alone."""
    proc = start_server(artifacts_dir, tmp_path, max_queue_items=HEAVY_ITEMS, batch_wait_timeout_s=0.002)
    x = test_images[:HEAVY_ITEMS]

    async def burst(max_retries: int) -> tuple[list[Any], int]:
        async with AsyncVAEClient(proc.url, max_retries=max_retries) as client:
            answers = await asyncio.gather(*(client.anomaly_score(x, mc_samples=HEAVY_MC_SAMPLES, seed=0)
                                             for _ in range(CONCURRENT)), return_exceptions=True)
            return list(answers), client.retries

    try:
        with VAEClient(proc.url) as client:
            alone = client.anomaly_score(x, mc_samples=HEAVY_MC_SAMPLES, seed=0).score
        answers, _ = asyncio.run(burst(max_retries=0))
        refused = [a for a in answers if isinstance(a, OverloadedError)]
        assert refused, "the queue never filled: the test proves nothing"
        assert all(e.status_code == 429 and e.error_type == "overloaded" and e.retry_after_s and e.retry_after_s >= 1
                   for e in refused)
        assert all(isinstance(a, OverloadedError) or np.array_equal(a.score, alone) for a in answers)
        before = rejections(proc)
        answers, retries = asyncio.run(burst(max_retries=20))
        assert all(not isinstance(a, BaseException) for a in answers), [a for a in answers if isinstance(a, BaseException)]
        for answer in answers:
            np.testing.assert_array_equal(answer.score, alone)
        assert retries > 0 and rejections(proc) - before == retries  # each retry followed one 429
    finally:
        proc.stop()


def test_blocking_client_waits_for_a_server_that_is_still_starting(artifacts_dir: Path, tmp_path: Path,
                                                                   test_images: np.ndarray) -> None:
    """Connection refused while the process starts, then 503 + Retry-After while it loads: both retried."""
    proc = start_server(artifacts_dir, tmp_path, wait_ready=False)
    try:
        with VAEClient(proc.url, max_retries=200, backoff_s=0.05, max_backoff_s=0.2) as client:
            scores = client.anomaly_score(test_images[:2])
            assert len(scores) == 2 and client.retries > 0
            assert client.ready()
    finally:
        proc.stop()
