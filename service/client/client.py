"""A Python client for the vaeserve HTTP API: numpy arrays in, typed results out. httpx and numpy only.

    from service.client import VAEClient

    with VAEClient("http://127.0.0.1:8000") as client:
        scores = client.anomaly_score(x)          # x: (n, features) float array, or one item (features,)
        scores.score, scores.is_anomaly           # (n,) arrays
        client.anomaly_score(frame)               # a table model: a DataFrame or a list of dicts by column

Arrays travel as .npy bodies (`Content-Type: application/x-npy`, options as query parameters), so
neither side parses JSON floats; a table's records (DataFrame rows, dicts) travel as JSON. 429 and 503 answers are retried after the service's `Retry-After`
(exponential backoff when it sends none), as are failed connections; every other error answer is
raised as a VAEServiceError subclass carrying the service's `error` and `error_type`.
`AsyncVAEClient` has the same methods as coroutines.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

import service.client.closed_loop as closed_loop
from model.contract import DEFAULT_MC_SAMPLES, DEFAULT_SCORE_VARIANT
from service.client.types import (
    AnomalyScores,
    Call,
    Encoding,
    Interpolation,
    InvalidInputError,
    MalformedRequestError,
    ModelRef,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    Reconstruction,
    Samples,
    ServiceTimeoutError,
    UnauthorizedError,
    VAEClientError,
    VAEConnectionError,
    VAEServiceError,
    error_from_response,
    parse_npy,
)
from service.core.npy import npy_bytes

RETRY_STATUSES = frozenset({429, 503})


def _prefix(model: str | None, version: str | None) -> str:
    """'' (the default model), /models/{model}, or /models/{model}/versions/{version}."""
    if model is None:
        if version is not None:
            raise ValueError("version: give model= too")
        return ""
    path = f"/models/{quote(model, safe='')}"
    return path + (f"/versions/{quote(version, safe='')}" if version is not None else "")


def _params(**options: Any) -> dict[str, str]:
    """Query parameters as the service reads them (JSON values); None is left out."""
    return {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in options.items() if v is not None}


def _items(x: Any) -> np.ndarray:
    """A batch (n, ...) of items, or one item (features,) as a batch of one."""
    array = np.asarray(x)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"x: items must be numeric, got dtype {array.dtype}")
    return array[None] if array.ndim == 1 else array


def records(x: Any) -> list[Any] | None:
    """A table's items as JSON records when x is a pandas DataFrame or a list of dicts (None otherwise):
    a DataFrame's NaN and NaT become null, numpy scalars plain numbers."""
    if hasattr(x, "to_dict") and hasattr(x, "columns"):  # pandas, without importing it
        rows = x.to_dict(orient="records")
    elif isinstance(x, dict):
        rows = [x]
    elif isinstance(x, list) and x and isinstance(x[0], dict):
        rows = x
    else:
        return None
    return [{str(k): _json_value(v) for k, v in row.items()} for row in rows]


def _json_value(value: Any) -> Any:
    """NaN (pandas' and numpy's missing) as null, numpy scalars as plain numbers."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and value != value else value


def _body(x: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The request: JSON records for a table's DataFrame or dicts, else an .npy body with the options as
    query parameters (the fastest form for arrays)."""
    rows = records(x)
    if rows is not None:
        return {"json": {"inputs": rows, **{k: v for k, v in options.items() if v is not None}}}
    return {"content": npy_bytes(_items(x)), "params": _params(**options)}


def _latent(z: Any) -> list[float] | None:
    return None if z is None else np.asarray(z, dtype=np.float64).ravel().tolist()


def _item(x: Any) -> list[float] | None:
    return None if x is None else np.asarray(x, dtype=np.float64).ravel().tolist()


class _Calls:
    """The HTTP call behind each method; the two clients only differ in how they send it."""

    @staticmethod
    def encode(x: Any, *, sample: bool, seed: int | None, model: str | None, version: str | None) -> Call:
        return Call("POST", _prefix(model, version) + "/encode", **_body(x, {"sample": sample, "seed": seed}),
                    parse=Encoding.from_json)

    @staticmethod
    def reconstruct(x: Any, *, model: str | None, version: str | None) -> Call:
        return Call("POST", _prefix(model, version) + "/reconstruct", content=npy_bytes(_items(x)), npy_answer=True,
                    parse=Reconstruction.from_npy)

    @staticmethod
    def sample(n: int, *, seed: int, temperature: float, model: str | None, version: str | None) -> Call:
        return Call("POST", _prefix(model, version) + "/sample", json={"n": n, "seed": seed, "temperature": temperature},
                    parse=Samples.from_json)

    @staticmethod
    def interpolate(start: Any, end: Any, *, z_start: Any, z_end: Any, steps: int, method: str, model: str | None,
                    version: str | None) -> Call:
        body = {"start": _item(start), "end": _item(end), "z_start": _latent(z_start), "z_end": _latent(z_end),
                "steps": steps, "method": method}
        return Call("POST", _prefix(model, version) + "/interpolate",
                    json={k: v for k, v in body.items() if v is not None}, parse=Interpolation.from_json)

    @staticmethod
    def anomaly_score(x: Any, *, mc_samples: int, seed: int, score: str, target_fpr: float | None,
                      contamination: float | None, fdr: float | None, explain: bool, model: str | None,
                      version: str | None) -> Call:
        options = {"mc_samples": mc_samples, "seed": seed, "score": score, "target_fpr": target_fpr,
                   "contamination": contamination, "fdr": fdr, "explain": explain or None}
        return Call("POST", _prefix(model, version) + "/anomaly-score", **_body(x, options),
                    parse=AnomalyScores.from_json)

    @staticmethod
    def model_card(*, model: str | None, version: str | None) -> Call:
        return Call("GET", _prefix(model, version) + "/model" if model is None else _prefix(model, version),
                    parse=lambda response: response.json())

    @staticmethod
    def probe(path: str) -> Call:
        """/healthz or /readyz: True on 200, False on 503 (not retried: the answer is the point)."""
        return Call("GET", path, retry=False, accept_statuses=frozenset({503}),
                    parse=lambda response: response.status_code == 200)


class _Base:
    def __init__(self, url: str, *, api_key: str | None, timeout_s: float, max_retries: int, backoff_s: float,
                 max_backoff_s: float) -> None:
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("timeout_s must be > 0, max_retries and backoff_s >= 0")
        self.url = url.rstrip("/")
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.retries = 0  # retries made so far, for a caller's metrics (a sustained rate means: add capacity)
        self._client_options: dict[str, Any] = {
            "base_url": self.url, "timeout": httpx.Timeout(timeout_s),
            "headers": {"authorization": f"Bearer {api_key}"} if api_key else {}}

    def _delay_s(self, attempt: int, response: httpx.Response | None) -> float:
        """Retry-After when the service sent one (plus up to 10% so clients told the same second spread
        out), else exponential backoff with jitter."""
        header = response.headers.get("retry-after", "") if response is not None else ""
        if header.isascii() and header.isdigit():  # '²'.isdigit() is True, int('²') fails
            return int(header) * random.uniform(1.0, 1.1)
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)

    def _outcome(self, call: Call, attempt: int, response: httpx.Response | None,
                 error: httpx.TransportError | None) -> tuple[bool, Any]:
        """(retry?, result): raise when the call failed for good."""
        can_retry = call.retry and attempt < self.max_retries
        if error is not None:
            if can_retry:
                return True, None
            raise VAEConnectionError(f"{call.method} {self.url}{call.path}: {type(error).__name__}: {error}") from error
        assert response is not None, "either a response or an error"
        if response.status_code in RETRY_STATUSES and can_retry and response.status_code not in call.accept_statuses:
            return True, None
        if response.is_success or response.status_code in call.accept_statuses:
            return False, call.parse(response)
        raise error_from_response(response)


class VAEClient(_Base):
    """Blocking client. `timeout_s` bounds each attempt; `max_retries` counts retries after the first try."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 5, backoff_s: float = 0.25, max_backoff_s: float = 10.0,
                 max_connections: int = 16) -> None:
        super().__init__(url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s)
        self._http = httpx.Client(limits=httpx.Limits(max_connections=max_connections), **self._client_options)

    def _send(self, call: Call) -> Any:
        for attempt in range(self.max_retries + 1):
            response, error = None, None
            try:
                response = self._http.request(call.method, call.path, **call.request_options())
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                error = exc
            retry, result = self._outcome(call, attempt, response, error)
            if not retry:
                return result
            self.retries += 1
            time.sleep(self._delay_s(attempt, response))
        raise AssertionError("the last attempt returns or raises")

    def encode(self, x: Any, *, sample: bool = False, seed: int | None = None, model: str | None = None,
               version: str | None = None) -> Encoding:
        return self._send(_Calls.encode(x, sample=sample, seed=seed, model=model, version=version))

    def reconstruct(self, x: Any, *, model: str | None = None, version: str | None = None) -> Reconstruction:
        return self._send(_Calls.reconstruct(x, model=model, version=version))

    def sample(self, n: int, *, seed: int = 0, temperature: float = 1.0, model: str | None = None,
               version: str | None = None) -> Samples:
        return self._send(_Calls.sample(n, seed=seed, temperature=temperature, model=model, version=version))

    def interpolate(self, start: Any = None, end: Any = None, *, z_start: Any = None, z_end: Any = None,
                    steps: int = 10, method: str = "linear", model: str | None = None,
                    version: str | None = None) -> Interpolation:
        return self._send(_Calls.interpolate(start, end, z_start=z_start, z_end=z_end, steps=steps, method=method,
                                             model=model, version=version))

    def anomaly_score(self, x: Any, *, mc_samples: int = DEFAULT_MC_SAMPLES, seed: int = 0, score: str = DEFAULT_SCORE_VARIANT,
                      target_fpr: float | None = None, contamination: float | None = None, fdr: float | None = None,
                      explain: bool = False, model: str | None = None, version: str | None = None) -> AnomalyScores:
        """Scores per item; `fdr` flags by Benjamini-Hochberg on the p-values instead of a threshold."""
        return self._send(_Calls.anomaly_score(x, mc_samples=mc_samples, seed=seed, score=score, target_fpr=target_fpr,
                                               contamination=contamination, fdr=fdr, explain=explain, model=model,
                                               version=version))

    def model_card(self, *, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        return self._send(_Calls.model_card(model=model, version=version))

    # ---- feedback, thresholds and jobs (service/client/closed_loop.py)
    def feedback(self, labels: Iterable[tuple[str, str]], *, model: str | None = None) -> dict[str, Any]:
        """Label scored items: (score_id, "anomaly" | "normal") pairs."""
        return self._send(closed_loop.feedback(labels, model=model))

    def feedback_summary(self, *, model: str | None = None) -> dict[str, Any]:
        return self._send(closed_loop.feedback_summary(model=model))

    def recalibrate(self, goal: str, *, model: str, target: float | None = None, version: str | None = None,
                    score: str = DEFAULT_SCORE_VARIANT, prevalence: float | None = None,
                    dry_run: bool = False) -> dict[str, Any]:
        """A new threshold for goal target_fpr | precision | f1 (needs an admin key)."""
        return self._send(closed_loop.recalibrate(goal, target=target, model=model, version=version, score=score,
                                                  prevalence=prevalence, dry_run=dry_run))

    def revert_threshold(self, *, model: str, version: str | None = None) -> dict[str, Any]:
        return self._send(closed_loop.revert_threshold(model=model, version=version))

    def submit_job(self, items: Any = None, *, path: str | None = None, model: str | None = None,
                   version: str | None = None, **options: Any) -> dict[str, Any]:
        """A bulk job: a local file or an array uploaded, or `path` in the service's input directory;
        options as `vaeserve score` (score, mc_samples, seed, target_fpr, contamination, chunk_size)."""
        return self._send(closed_loop.submit_job(items, path=path, model=model, version=version, options=options))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._send(closed_loop.job(job_id))

    def job_result(self, job_id: str) -> bytes:
        """The job's CSV, as `vaeserve score` writes it."""
        return self._send(closed_loop.job_result(job_id))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._send(closed_loop.cancel_job(job_id))

    def wait_for_job(self, job_id: str, *, timeout_s: float = 3600, poll_s: float = 0.5,
                     until: tuple[str, ...] = closed_loop.JOB_DONE) -> dict[str, Any]:
        """Poll the job until its state is one of `until` (by default: it has ended)."""
        deadline = time.monotonic() + timeout_s
        while (state := self.job(job_id))["state"] not in until:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state['state']} after {timeout_s}s")
            time.sleep(poll_s)
        return state

    def health(self) -> bool:
        return self._send(_Calls.probe("/healthz"))

    def ready(self) -> bool:
        return self._send(_Calls.probe("/readyz"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VAEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncVAEClient(_Base):
    """The same methods as VAEClient, as coroutines; one client serves many concurrent calls."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 5, backoff_s: float = 0.25, max_backoff_s: float = 10.0,
                 max_connections: int = 64) -> None:
        super().__init__(url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s)
        self._http = httpx.AsyncClient(limits=httpx.Limits(max_connections=max_connections), **self._client_options)

    async def _send(self, call: Call) -> Any:
        for attempt in range(self.max_retries + 1):
            response, error = None, None
            try:
                response = await self._http.request(call.method, call.path, **call.request_options())
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                error = exc
            retry, result = self._outcome(call, attempt, response, error)
            if not retry:
                return result
            self.retries += 1
            await asyncio.sleep(self._delay_s(attempt, response))
        raise AssertionError("the last attempt returns or raises")

    async def encode(self, x: Any, *, sample: bool = False, seed: int | None = None, model: str | None = None,
                     version: str | None = None) -> Encoding:
        return await self._send(_Calls.encode(x, sample=sample, seed=seed, model=model, version=version))

    async def reconstruct(self, x: Any, *, model: str | None = None, version: str | None = None) -> Reconstruction:
        return await self._send(_Calls.reconstruct(x, model=model, version=version))

    async def sample(self, n: int, *, seed: int = 0, temperature: float = 1.0, model: str | None = None,
                     version: str | None = None) -> Samples:
        return await self._send(_Calls.sample(n, seed=seed, temperature=temperature, model=model, version=version))

    async def interpolate(self, start: Any = None, end: Any = None, *, z_start: Any = None, z_end: Any = None,
                          steps: int = 10, method: str = "linear", model: str | None = None,
                          version: str | None = None) -> Interpolation:
        return await self._send(_Calls.interpolate(start, end, z_start=z_start, z_end=z_end, steps=steps,
                                                   method=method, model=model, version=version))

    async def anomaly_score(self, x: Any, *, mc_samples: int = DEFAULT_MC_SAMPLES, seed: int = 0, score: str = DEFAULT_SCORE_VARIANT,
                            target_fpr: float | None = None, contamination: float | None = None,
                            fdr: float | None = None, explain: bool = False, model: str | None = None,
                            version: str | None = None) -> AnomalyScores:
        """Scores per item; `fdr` flags by Benjamini-Hochberg on the p-values instead of a threshold."""
        return await self._send(_Calls.anomaly_score(x, mc_samples=mc_samples, seed=seed, score=score,
                                                     target_fpr=target_fpr, contamination=contamination, fdr=fdr,
                                                     explain=explain, model=model, version=version))

    async def model_card(self, *, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        return await self._send(_Calls.model_card(model=model, version=version))

    # ---- feedback, thresholds and jobs: as VAEClient's
    async def feedback(self, labels: Iterable[tuple[str, str]], *, model: str | None = None) -> dict[str, Any]:
        return await self._send(closed_loop.feedback(labels, model=model))

    async def feedback_summary(self, *, model: str | None = None) -> dict[str, Any]:
        return await self._send(closed_loop.feedback_summary(model=model))

    async def recalibrate(self, goal: str, *, model: str, target: float | None = None, version: str | None = None,
                          score: str = DEFAULT_SCORE_VARIANT, prevalence: float | None = None,
                          dry_run: bool = False) -> dict[str, Any]:
        return await self._send(closed_loop.recalibrate(goal, target=target, model=model, version=version,
                                                        score=score, prevalence=prevalence, dry_run=dry_run))

    async def submit_job(self, items: Any = None, *, path: str | None = None, model: str | None = None,
                         version: str | None = None, **options: Any) -> dict[str, Any]:
        return await self._send(closed_loop.submit_job(items, path=path, model=model, version=version,
                                                       options=options))

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._send(closed_loop.job(job_id))

    async def job_result(self, job_id: str) -> bytes:
        return await self._send(closed_loop.job_result(job_id))

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._send(closed_loop.cancel_job(job_id))

    async def health(self) -> bool:
        return await self._send(_Calls.probe("/healthz"))

    async def ready(self) -> bool:
        return await self._send(_Calls.probe("/readyz"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncVAEClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = [
    "AnomalyScores", "AsyncVAEClient", "Encoding", "Interpolation", "InvalidInputError", "MalformedRequestError",
    "ModelRef", "NotFoundError", "NotReadyError", "OverloadedError", "PayloadTooLargeError", "Reconstruction",
    "Samples", "ServiceTimeoutError", "UnauthorizedError", "VAEClient", "VAEClientError", "VAEConnectionError",
    "VAEServiceError", "parse_npy",
]
