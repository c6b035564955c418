"""Operational routes: liveness, readiness, metrics, and the model card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import RegistryDep, model_address
from service.pipeline import ModelHandle
from service.schemas import ErrorResponse, HealthResponse

router = APIRouter()
SCORE_VARIANTS = {
    "elbo": "-ELBO = E_q[-log p(x|z)] + KL(q(z|x)||p(z)), K Monte Carlo samples (Kingma & Welling 2013)",
    "iwae": "-log (1/K) sum_k p(x,z_k)/q(z_k|x): importance-weighted bound on -log p(x) (Burda et al. 2015)",
    "elbo_latent": "(elbo - mean)/sd + (latent - mean)/sd, latent = (mu(x)-m)^T S^-1 (mu(x)-m) the Mahalanobis "
                   "distance of the posterior mean from normal training data (Lee et al. 2018); mean and sd from "
                   "held-out normal data",
    "elbo_knn": "(elbo - mean)/sd + (knn - mean)/sd, knn = mean Euclidean distance of the encoder's last hidden "
                "layer (centred, scaled per unit, top 64 principal components) to its 5 nearest of up to 8192 "
                "normal training items (Bergman et al. 2020, Deep Nearest Neighbor Anomaly Detection); mean and "
                "sd from held-out normal data",
}


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", response_model=HealthResponse, summary="Readiness: artifacts verified and graphs warm",
            responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> Any:
    registry = request.app.state.registry
    if registry.ready:
        return {"status": "ready"}
    reason = registry.not_ready_reason()
    return JSONResponse({"error": f"not ready: {reason}", "error_type": "model_not_ready"}, status_code=503,
                        headers={"Retry-After": "1"})


@router.get("/metrics", summary="Prometheus exposition", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/model", summary="The default model's card: manifest summary, backend, device, calibration",
            responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def model_card(request: Request, registry: RegistryDep) -> dict[str, Any]:
    async with registry.use(*model_address(request)) as handle:
        return card(handle)


def card(handle: ModelHandle) -> dict[str, Any]:
    """What a user needs to know about one loaded model version."""
    manifest = handle.runtime.manifest
    calibration = manifest.get("calibration", {})
    metrics = manifest.get("metrics", {})
    return {
        "model": handle.ref,
        "created": manifest["model"].get("created"),
        "backend": handle.runtime.backend,
        "device": handle.runtime.device,
        "precision": handle.runtime.precision,
        "quantization": {p: {"graphs": sorted(q.get("graphs", {})), "parity": q.get("parity", {}).get("scores", {})}
                         for p, q in manifest.get("quantization", {}).items()},
        "config": manifest["config"],
        "input": {k: v for k, v in manifest["input"].items() if k != "standardization"},
        "likelihood": manifest["likelihood"],
        "latent_dim": handle.runtime.config.latent_dim,
        "graphs": {name: {"inputs": g["inputs"], "outputs": g["outputs"]} for name, g in manifest["graphs"].items()},
        "score_variants": {name: SCORE_VARIANTS.get(name, "") for name in calibration.get("variants", {})},
        "calibration": {
            "split": calibration.get("split"), "examples": calibration.get("examples"),
            "mc_samples": calibration.get("mc_samples"),
            "default_threshold_quantile": calibration.get("default_threshold_quantile"),
            "variants": {name: {k: v for k, v in cal.items() if k != "quantiles"}
                         for name, cal in calibration.get("variants", {}).items()},
        },
        "metrics": metrics,
        "latent": manifest.get("latent", {}),
        "training": manifest.get("training", {}),
        "parity": manifest.get("parity", {}),
    }
