"""What the client (service/client/client.py) sends and returns: its calls, typed results, and errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

NPY = "application/x-npy"


def parse_npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


@dataclass(frozen=True)
class Call:
    """One HTTP call: where, what, and how to read a successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None  # an .npy body
    json: dict[str, Any] | None = None
    npy_answer: bool = False  # ask for the endpoint's main array as .npy (no JSON floats)
    retry: bool = True
    accept_statuses: frozenset[int] = frozenset()  # non-2xx answers that are results, not errors

    def request_options(self) -> dict[str, Any]:
        headers = {"accept": NPY if self.npy_answer else "application/json"}
        if self.content is not None:
            headers["content-type"] = NPY
            return {"params": self.params, "content": self.content, "headers": headers}
        return {"params": self.params, "json": self.json, "headers": headers}


# ---- results


@dataclass(frozen=True)
class ModelRef:
    """The model version that computed an answer."""

    name: str
    version: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRef:
        return cls(str(data["name"]), str(data["version"]))


def _floats(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True)
class Encoding:
    mu: np.ndarray  # (n, latent_dim)
    log_var: np.ndarray  # (n, latent_dim)
    z: np.ndarray | None  # (n, latent_dim) with sample=True
    model: ModelRef

    @classmethod
    def from_json(cls, response: httpx.Response) -> Encoding:
        data = response.json()
        z = data.get("z")
        return cls(_floats(data["mu"]), _floats(data["log_var"]), None if z is None else _floats(z),
                   ModelRef.from_json(data["model"]))


@dataclass(frozen=True)
class Reconstruction:
    x: np.ndarray  # (n, features): decoder mean at the posterior mean
    model: ModelRef

    @classmethod
    def from_npy(cls, response: httpx.Response) -> Reconstruction:
        return cls(parse_npy(response.content),
                   ModelRef(response.headers.get("x-model-name", ""), response.headers.get("x-model-version", "")))


@dataclass(frozen=True)
class Samples:
    samples: np.ndarray  # (n, features)
    latents: np.ndarray  # (n, latent_dim)
    model: ModelRef

    @classmethod
    def from_json(cls, response: httpx.Response) -> Samples:
        data = response.json()
        return cls(_floats(data["samples"]), _floats(data["latents"]), ModelRef.from_json(data["model"]))


@dataclass(frozen=True)
class Interpolation:
    latents: np.ndarray  # (steps, latent_dim)
    outputs: np.ndarray  # (steps, features)
    method: str
    model: ModelRef

    @classmethod
    def from_json(cls, response: httpx.Response) -> Interpolation:
        data = response.json()
        return cls(_floats(data["latents"]), _floats(data["outputs"]), data["method"], ModelRef.from_json(data["model"]))


@dataclass(frozen=True)
class AnomalyScores:
    """Per item, as columns: (n,) arrays (NaN where the service sent null)."""

    score: np.ndarray  # float64: higher is more unusual
    reconstruction_nll: np.ndarray
    kl: np.ndarray
    percentile: np.ndarray  # share of held-out normal data scoring lower, in %
    p_value: np.ndarray  # conformal: for normal data P(p_value <= a) <= a
    threshold: np.ndarray  # with fdr: the lowest flagged score (NaN: none flagged)
    is_anomaly: np.ndarray  # bool
    feature_nll: np.ndarray | None  # (n, features) with explain=True
    variant: str
    mc_samples: int
    seed: int
    model: ModelRef
    p_value_method: str | None = None  # conformal, quantile_grid (approximate), or None (no calibration)
    fdr: float | None = None
    p_value_cutoff: float | None = None  # with fdr: items with p_value <= this are flagged
    # Table models: per item, the columns by NLL, largest first (explain=True), and the categories the
    # model never saw in training, as {"column", "value"} (scored, not refused).
    explanation: list[list[dict[str, Any]]] | None = None
    unseen_categories: list[list[dict[str, Any]]] | None = None
    score_ids: list[str] | None = None  # per item: quote it to label the item (VAEClient.feedback)

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def from_json(cls, response: httpx.Response) -> AnomalyScores:
        data = response.json()
        results = data["results"]

        def column(name: str) -> np.ndarray:
            return np.array([np.nan if r.get(name) is None else r[name] for r in results], dtype=np.float64)

        explained = bool(results) and results[0].get("feature_nll") is not None
        return cls(column("score"), column("reconstruction_nll"), column("kl"), column("percentile"),
                   column("p_value"), column("threshold"), np.array([r["is_anomaly"] for r in results], dtype=bool),
                   _floats([r["feature_nll"] for r in results]) if explained else None,
                   data["score_variant"], int(data["mc_samples"]), int(data["seed"]), ModelRef.from_json(data["model"]),
                   data.get("p_value_method"), data.get("fdr"), data.get("p_value_cutoff"),
                   [r.get("explanation") or [] for r in results] if explained else None,
                   [r.get("unseen_categories") or [] for r in results],
                   score_ids=[r["score_id"] for r in results] if results and "score_id" in results[0] else None)


# ---- errors


class VAEClientError(Exception):
    """Anything the client could not get an answer for."""


class VAEConnectionError(VAEClientError):
    """The service could not be reached (after the retries)."""


class VAEServiceError(VAEClientError):
    """An error answer: the HTTP status, the service's `error` message and its `error_type`."""

    def __init__(self, status_code: int, error: str, error_type: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status_code} {error_type}: {error}")
        self.status_code = status_code
        self.error = error
        self.error_type = error_type
        self.retry_after_s = retry_after_s


class MalformedRequestError(VAEServiceError):
    """400 / 415: the body could not be read."""


class UnauthorizedError(VAEServiceError):
    """401 / 403: missing, invalid or insufficient API key."""


class NotFoundError(VAEServiceError):
    """404: no such model, version or route."""


class PayloadTooLargeError(VAEServiceError):
    """413: too many items or too large a body: send smaller batches."""


class InvalidInputError(VAEServiceError):
    """422: a field is wrong; `error` names it (and the item index)."""


class OverloadedError(VAEServiceError):
    """429: the queue (or the key's quota) is full; still so after the retries."""


class NotReadyError(VAEServiceError):
    """503: not ready yet, or shutting down; still so after the retries."""


class ServiceTimeoutError(VAEServiceError):
    """504: the request waited past the service's request_timeout_s."""


_BY_STATUS: dict[int, type[VAEServiceError]] = {
    400: MalformedRequestError, 401: UnauthorizedError, 403: UnauthorizedError, 404: NotFoundError,
    413: PayloadTooLargeError, 415: MalformedRequestError, 422: InvalidInputError, 429: OverloadedError,
    503: NotReadyError, 504: ServiceTimeoutError,
}


def error_from_response(response: httpx.Response) -> VAEServiceError:
    """The exception for an error answer; bodies that are not the service's {error, error_type}
    (a proxy's page) keep their text."""
    try:
        data = response.json()
        error, error_type = str(data["error"]), str(data["error_type"])
    except (ValueError, KeyError, TypeError):
        error, error_type = response.text[:500] or response.reason_phrase, "http_error"
    retry_after = response.headers.get("retry-after", "")
    kind = _BY_STATUS.get(response.status_code, VAEServiceError)
    return kind(response.status_code, error, error_type,
                retry_after_s=float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None)
