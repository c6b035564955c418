"""Model cards: what a user needs to know about a loaded model version (GET /model, /models/{name})."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from model.contract import SCORE_VARIANTS
from service.core.handle import ModelHandle
from service.http.deps import RegistryDep, model_address
from service.http.schemas import ErrorResponse

router = APIRouter()


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
