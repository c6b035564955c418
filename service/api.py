"""The routes: parse and validate, call the pipeline, shape the answer. No queues, no torch."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import schemas
from service.deps import PipelineDep, SettingsDep, read_json_object, unless_disconnected, validate_options
from service.errors import InvalidInput, NotAcceptable, PayloadTooLarge
from service.inputs import format_items, parse_items, parse_latents

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text}
    for code, text in ((400, "malformed JSON"), (413, "too many items or too large a body"),
                       (415, "wrong content type"), (422, "invalid field (the message names it)"),
                       (429, "queue full; see Retry-After"), (503, "not ready or shutting down"),
                       (504, "waited too long in the queue"))
}


def body_doc(model: type[schemas.BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for routes that parse the body themselves (see app.custom_openapi)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def json_response(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _inputs(data: dict[str, Any], pipeline: PipelineDep, settings: SettingsDep, field: str = "inputs"
            ) -> tuple[np.ndarray, Any]:
    if field not in data:
        raise InvalidInput(f"{field}: field required")
    return parse_items(data.pop(field), field=field, spec=pipeline.current.spec, max_items=settings.max_items_per_request)


@router.post("/encode", response_model=schemas.EncodeResponse, responses=ERRORS,
             openapi_extra=body_doc(schemas.EncodeRequest), summary="Posterior mean and log-variance per item")
async def encode(request: Request, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    data = await read_json_object(request, settings)
    x, _ = _inputs(data, pipeline, settings)
    options = validate_options(schemas.EncodeOptions, data)
    out = await unless_disconnected(request, pipeline.encode(x, sample=options.sample, seed=options.seed or 0))
    payload = {"model": pipeline.current.ref, "mu": out["mu"], "log_var": out["log_var"]}
    if options.sample:
        payload["z"] = out["z"]
    return json_response(payload)


@router.post("/reconstruct", response_model=schemas.ReconstructResponse, responses=ERRORS,
             openapi_extra=body_doc(schemas.ReconstructRequest), summary="Decoder mean at the posterior mean")
async def reconstruct(request: Request, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    data = await read_json_object(request, settings)
    x, layout = _inputs(data, pipeline, settings)
    validate_options(schemas.Options, data)
    recon = await unless_disconnected(request, pipeline.reconstruct(x))
    return json_response({"model": pipeline.current.ref,
                          "reconstructions": format_items(recon, layout=layout, spec=pipeline.current.spec)})


@router.post("/sample", response_model=schemas.SampleResponse, summary="Decode z ~ N(0, temperature² I)",
             openapi_extra=body_doc(schemas.SampleRequest),
             responses={**ERRORS, 200: {"content": {"application/json": {}, "image/png": {}},
                                        "description": "samples (JSON) or a PNG grid with Accept: image/png"}})
async def sample(request: Request, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    options = validate_options(schemas.SampleRequest, await read_json_object(request, settings))
    if options.n > settings.max_sample_n:
        raise PayloadTooLarge(f"n: {options.n} exceeds the limit of {settings.max_sample_n}")
    accept = request.headers.get("accept", "application/json")
    wants_png = "image/png" in accept
    if wants_png and not pipeline.current.spec.is_image:
        raise NotAcceptable("image/png is only available for image models")
    z, samples = await unless_disconnected(request, pipeline.sample(n=options.n, seed=options.seed,
                                                                    temperature=options.temperature))
    if wants_png:
        return Response(_png_grid(samples, shape=pipeline.current.spec.shape), media_type="image/png",
                        headers={"X-Model-Name": pipeline.current.ref["name"],
                                 "X-Model-Version": pipeline.current.ref["version"]})
    return json_response({"model": pipeline.current.ref, "samples": samples, "latents": z})


@router.post("/interpolate", response_model=schemas.InterpolateResponse, responses=ERRORS,
             openapi_extra=body_doc(schemas.InterpolateRequest), summary="Decode a path between two points")
async def interpolate(request: Request, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    data = await read_json_object(request, settings)
    ends = {k: data.pop(k) for k in ("start", "end") if k in data and data[k] is not None}
    data = {k: v for k, v in data.items() if k not in ("start", "end")}
    options = validate_options(schemas.InterpolateOptions, data)
    latent_dim = pipeline.current.runtime.config.latent_dim
    z = {}
    for name in ("start", "end"):
        latent = getattr(options, f"z_{name}")
        if (name in ends) == (latent is not None):
            raise InvalidInput(f"{name}: give exactly one of `{name}` (an input) or `z_{name}` (a latent)")
        if latent is not None:
            z[name] = parse_latents(latent, field=f"z_{name}", latent_dim=latent_dim)
        else:
            x, _ = parse_items([ends[name]], field=name, spec=pipeline.current.spec, max_items=1)
            z[name] = (await unless_disconnected(request, pipeline.encode(x, sample=False, seed=0)))["mu"][0]
    latents, outputs = await unless_disconnected(
        request, pipeline.interpolate(z["start"], z["end"], steps=options.steps, method=options.method))
    return json_response({"model": pipeline.current.ref, "method": options.method, "latents": latents, "outputs": outputs})


@router.post("/anomaly-score", response_model=schemas.AnomalyScoreResponse, responses=ERRORS,
             openapi_extra=body_doc(schemas.AnomalyScoreRequest), summary="Anomaly score (-ELBO by default) per item")
async def anomaly_score(request: Request, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    data = await read_json_object(request, settings)
    x, _ = _inputs(data, pipeline, settings)
    options = validate_options(schemas.AnomalyScoreOptions, data)
    if options.mc_samples > settings.max_mc_samples:
        raise InvalidInput(f"mc_samples: {options.mc_samples} exceeds the limit of {settings.max_mc_samples}")
    threshold, quantile = pipeline.threshold(options.score, target_fpr=options.target_fpr,
                                             contamination=options.contamination)
    out = await unless_disconnected(request, pipeline.score(x, mc_samples=options.mc_samples, seed=options.seed))
    scores = out[f"{options.score}_score"]
    percentiles = pipeline.percentiles(options.score, scores)
    histogram = pipeline.metrics.anomaly_score.labels(variant=options.score)
    results = []
    for i, value in enumerate(scores.tolist()):
        histogram.observe(value)
        result = {"score": value, "reconstruction_nll": float(out["reconstruction_nll"][i]), "kl": float(out["kl"][i]),
                  "percentile": float(percentiles[i]), "threshold": threshold, "is_anomaly": value > threshold}
        if options.explain:
            result["feature_nll"] = out["feature_nll"][i]
        results.append(result)
    return json_response({"model": pipeline.current.ref, "score_variant": options.score,
                          "mc_samples": options.mc_samples, "seed": options.seed,
                          "threshold_quantile": quantile, "results": results})


def _png_grid(samples: np.ndarray, *, shape: tuple[int, ...]) -> bytes:
    from PIL import Image

    height, width = shape[-2], shape[-1]
    n = len(samples)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * height, cols * width), dtype=np.uint8)
    for i, row in enumerate(samples):
        r, c = divmod(i, cols)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = (np.clip(row, 0, 1) * 255).reshape(height, width)
    buffer = io.BytesIO()
    Image.fromarray(grid, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
