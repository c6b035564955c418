"""The Python client of a vaeserve service and bulk scoring: imports nothing of the server."""

from service.client.client import AsyncVAEClient, VAEClient
from service.client.types import (
    AnomalyScores,
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
)

__all__ = ["AnomalyScores", "AsyncVAEClient", "Encoding", "InvalidInputError", "Interpolation",
           "MalformedRequestError", "ModelRef", "NotFoundError", "NotReadyError", "OverloadedError",
           "PayloadTooLargeError", "Reconstruction", "Samples", "ServiceTimeoutError", "UnauthorizedError",
           "VAEClient", "VAEClientError", "VAEConnectionError", "VAEServiceError"]
