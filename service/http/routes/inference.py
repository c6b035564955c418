"""The routes: parse and validate, call a model handle, shape the answer. No queues, no torch."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, NamedTuple

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from model.conformal import benjamini_hochberg
from model.contract import score_output
from service.core.errors import InvalidInput, NotAcceptable, PayloadTooLarge
from service.core.handle import ModelHandle
from service.core.inputs import (
    InputSpec,
    Layout,
    format_items,
    heatmap_png,
    is_image_list,
    parse_latents,
    png_bytes,
    to_pixels,
)
from service.core.npy import npy_bytes
from service.core.table_inputs import explanations, parse_model_items
from service.http import schemas
from service.http.body import NPY, read_request, unless_disconnected, validate_options, wants_npy
from service.http.deps import SettingsDep, admit_work, app_services, model_address

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text}
    for code, text in ((400, "malformed JSON"), (413, "too many items or too large a body"),
                       (415, "wrong content type"), (422, "invalid field (the message names it)"),
                       (429, "queue full; see Retry-After"), (503, "not ready or shutting down"),
                       (504, "waited too long in the queue"))
}


def body_doc(model: type[schemas.BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for routes that parse the body themselves (see service/http/app.py custom_openapi)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def items_body_doc(model: type[schemas.BaseModel]) -> dict[str, Any]:
    """JSON, or an .npy array of items with the other fields as query parameters."""
    doc = body_doc(model)
    doc["requestBody"]["content"][NPY] = {"schema": {"type": "string", "format": "binary"}}
    return doc


def answer(request: Request, payload: dict[str, Any], *, npy: np.ndarray) -> Response:
    """JSON, or with `Accept: application/x-npy` the endpoint's main array as .npy (model in headers)."""
    if wants_npy(request):
        model = payload["model"]
        return Response(npy_bytes(npy), media_type=NPY,
                        headers={"X-Model-Name": model["name"], "X-Model-Version": model["version"]})
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


async def _items(value: Any, *, field: str, handle: ModelHandle, max_items: int, resize: bool = False) -> Parsed:
    """parse_items (or, for a table model, its records); images are decoded on a worker thread, so a
    request of large images never holds the event loop (and every other request with it) while they decode."""
    parse = functools.partial(parse_model_items, value, field=field, spec=handle.spec, max_items=max_items,
                              resize=resize)
    if is_image_list(value) and handle.spec.is_image:
        return Parsed(*await asyncio.get_running_loop().run_in_executor(None, parse))
    return Parsed(*parse())


class Parsed(NamedTuple):
    """A request's items: the matrix the graphs take, the layout to answer in, and (tables) the unseen
    categories found, as {"item", "column", "value"}."""

    x: np.ndarray
    layout: Layout
    unseen: list[dict[str, Any]]


async def _inputs(data: dict[str, Any], handle: ModelHandle, settings: SettingsDep) -> Parsed:
    if "inputs" not in data:
        raise InvalidInput("inputs: field required")
    return await _items(data.pop("inputs"), field="inputs", handle=handle, max_items=settings.max_items_per_request,
                        resize=data.get("resize") is True)


@router.post("/encode", response_model=schemas.EncodeResponse, responses=ERRORS,
             openapi_extra=items_body_doc(schemas.EncodeRequest), summary="Posterior mean and log-variance per item")
async def encode(request: Request) -> Response:
    registry, settings = app_services(request)
    data = await read_request(request, settings)
    async with registry.use(*model_address(request)) as handle:
        x = (await _inputs(data, handle, settings)).x
        options = validate_options(schemas.EncodeOptions, data)
        work = admit_work(request, handle.ref, items=len(x))
        out = await unless_disconnected(
            request, handle.encode(x, sample=options.sample, seed=options.seed or 0, work=work), size=len(x))
    payload = {"model": handle.ref, "mu": out["mu"], "log_var": out["log_var"]}
    if options.sample:
        payload["z"] = out["z"]
    return answer(request, payload, npy=out["mu"])


@router.post("/reconstruct", response_model=schemas.ReconstructResponse, responses=ERRORS,
             openapi_extra=items_body_doc(schemas.ReconstructRequest), summary="Decoder mean at the posterior mean")
async def reconstruct(request: Request) -> Response:
    registry, settings = app_services(request)
    data = await read_request(request, settings)
    async with registry.use(*model_address(request)) as handle:
        x, layout, _ = await _inputs(data, handle, settings)
        validate_options(schemas.ItemOptions, data)
        work = admit_work(request, handle.ref, items=len(x))
        recon = await unless_disconnected(request, handle.reconstruct(x, work=work), size=len(x))
    return answer(request, {"model": handle.ref,
                            "reconstructions": format_items(recon, layout=layout, spec=handle.spec)}, npy=recon)


@router.post("/sample", response_model=schemas.SampleResponse, summary="Decode z ~ N(0, temperature² I)",
             openapi_extra=body_doc(schemas.SampleRequest),
             responses={**ERRORS, 200: {"content": {"application/json": {}, "image/png": {}},
                                        "description": "samples (JSON) or a PNG grid with Accept: image/png"}})
async def sample(request: Request) -> Response:
    registry, settings = app_services(request)
    options = validate_options(schemas.SampleRequest, await read_request(request, settings))
    if options.n > settings.max_sample_n:
        raise PayloadTooLarge(f"n: {options.n} exceeds the limit of {settings.max_sample_n}")
    wants_png = "image/png" in request.headers.get("accept", "")
    async with registry.use(*model_address(request)) as handle:
        if wants_png and not handle.spec.is_image:
            raise NotAcceptable("image/png is only available for image models")
        work = admit_work(request, handle.ref, items=options.n)
        z, samples = await unless_disconnected(
            request, handle.sample(n=options.n, seed=options.seed, temperature=options.temperature, work=work),
            size=options.n)
    if wants_png:
        return Response(_png_grid(samples, spec=handle.spec), media_type="image/png",
                        headers={"X-Model-Name": handle.ref["name"], "X-Model-Version": handle.ref["version"]})
    return answer(request, {"model": handle.ref, "samples": _as_items(samples, handle.spec), "latents": z}, npy=samples)


@router.post("/interpolate", response_model=schemas.InterpolateResponse, responses=ERRORS,
             openapi_extra=body_doc(schemas.InterpolateRequest), summary="Decode a path between two points")
async def interpolate(request: Request) -> Response:
    registry, settings = app_services(request)
    data = await read_request(request, settings)
    ends = {k: data.pop(k) for k in ("start", "end") if k in data and data[k] is not None}
    data = {k: v for k, v in data.items() if k not in ("start", "end")}
    options = validate_options(schemas.InterpolateOptions, data)
    async with registry.use(*model_address(request)) as handle:
        work = admit_work(request, handle.ref, items=options.steps + len(ends))
        z = {}
        for name in ("start", "end"):
            latent = getattr(options, f"z_{name}")
            if (name in ends) == (latent is not None):
                raise InvalidInput(f"{name}: give exactly one of `{name}` (an input) or `z_{name}` (a latent)")
            if latent is not None:
                z[name] = parse_latents(latent, field=f"z_{name}", latent_dim=handle.latent_dim)
            else:
                x = (await _items([ends[name]], field=name, handle=handle, max_items=1, resize=options.resize)).x
                z[name] = (await handle.encode(x, sample=False, seed=0, work=work))["mu"][0]
        latents, outputs = await unless_disconnected(
            request, handle.interpolate(z["start"], z["end"], steps=options.steps, method=options.method, work=work),
            size=options.steps)
    return answer(request, {"model": handle.ref, "method": options.method, "latents": latents,
                            "outputs": _as_items(outputs, handle.spec)}, npy=outputs)


@router.post("/anomaly-score", response_model=schemas.AnomalyScoreResponse, responses=ERRORS,
             openapi_extra=items_body_doc(schemas.AnomalyScoreRequest), summary="Anomaly score (-ELBO by default) per item")
async def anomaly_score(request: Request) -> Response:
    registry, settings = app_services(request)
    data = await read_request(request, settings)
    async with registry.use(*model_address(request)) as handle:
        x, _, unseen = await _inputs(data, handle, settings)
        options = validate_options(schemas.AnomalyScoreOptions, data)
        if options.heatmap and not handle.spec.is_image:
            raise InvalidInput("heatmap: only image models have pixels to draw; use explain for feature NLLs")
        if options.mc_samples > settings.max_mc_samples:
            raise InvalidInput(f"mc_samples: {options.mc_samples} exceeds the limit of {settings.max_mc_samples}")
        if options.fdr is not None and (options.target_fpr is not None or options.contamination is not None):
            raise InvalidInput("fdr: flags by Benjamini-Hochberg instead of a threshold; give it without "
                               "target_fpr and contamination")
        scoring = handle.scoring
        if options.fdr is not None and scoring.conformal.method(options.score) is None:
            raise InvalidInput(f"fdr: the model has no calibration scores for variant {options.score!r}")
        book = request.app.state.bookkeeping
        threshold, quantile = book.served_threshold(handle, options.score, target_fpr=options.target_fpr,
                                                    contamination=options.contamination)
        work = admit_work(request, handle.ref, items=len(x), mc_samples=options.mc_samples)
        scored = handle.score(x, variant=options.score, mc_samples=options.mc_samples, seed=options.seed, work=work)
        out = await unless_disconnected(request, scored, size=len(x) * options.mc_samples)
        scores = out[score_output(options.score)]
        registry.mirror_scores(handle, x=x, variant=options.score, mc_samples=options.mc_samples, seed=options.seed,
                               scores=scores)
    percentiles = scoring.percentiles(options.score, scores)
    p_values = scoring.p_values(options.score, scores)  # None: a variant without calibration
    flags, cutoff = scores > threshold, None
    shown: tuple[float | None, float | None] = (threshold, quantile)
    if options.fdr is not None and p_values is not None:
        # BH flags the items with p <= cutoff; as a score, that is "at least the lowest flagged score".
        flags, cutoff = benjamini_hochberg(p_values, options.fdr)
        flagged = scores[flags]
        shown = (float(flagged.min()) if len(flagged) else None), None
    p_list = p_values.tolist() if p_values is not None else [None] * len(scores)
    flag_list, values = flags.tolist(), scores.tolist()
    score_ids = book.ids.issue(model=handle.name, version=handle.version, variant=options.score, scores=values,
                               threshold=shown[0], flags=flag_list)  # signed, self-describing: no write
    table = handle.spec.table
    explained = explanations(table, out["feature_nll"]) if options.explain and table is not None else []
    unseen_by_item: dict[int, list[dict[str, Any]]] = {}
    for note in unseen:
        unseen_by_item.setdefault(note["item"], []).append({"column": note["column"], "value": note["value"]})
    histogram = registry.metrics.anomaly_score.labels(model=handle.name, version=handle.version, variant=options.score)
    results = []
    for i, value in enumerate(values):
        histogram.observe(value)
        result = {"score": value, "reconstruction_nll": float(out["reconstruction_nll"][i]), "kl": float(out["kl"][i]),
                  "percentile": float(percentiles[i]), "p_value": p_list[i],
                  "threshold": shown[0], "is_anomaly": flag_list[i], "score_id": score_ids[i]}
        if options.explain and table is not None:
            result["feature_nll"], result["explanation"] = explained[i]
        elif options.explain:
            result["feature_nll"] = out["feature_nll"][i]
        if i in unseen_by_item:
            result["unseen_categories"] = unseen_by_item[i]
        if options.heatmap:
            result["heatmap_png"] = heatmap_png(out["feature_nll"][i], spec=handle.spec)
        results.append(result)
    return answer(request, {"model": handle.ref, "score_variant": options.score, "mc_samples": options.mc_samples,
                            "seed": options.seed, "threshold_quantile": shown[1],
                            "p_value_method": scoring.conformal.method(options.score), "fdr": options.fdr,
                            "p_value_cutoff": cutoff, "results": results}, npy=scores)


def _as_items(values: np.ndarray, spec: InputSpec) -> Any:
    """Decoder outputs as JSON gives them: a table model's as records by column name, others as arrays."""
    return spec.table.decode(values) if spec.table is not None else values


def _png_grid(samples: np.ndarray, *, spec: InputSpec) -> bytes:
    """Samples as one PNG grid, grey or colour as the model is."""
    images = to_pixels(samples, spec=spec)  # (N, H, W) or (N, H, W, 3)
    n, height, width = images.shape[:3]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * height, cols * width, *images.shape[3:]), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
    return png_bytes(grid)


# The routes the fast lane (service/http/middleware/fastlane.py) dispatches to directly, also under MODEL_PREFIXES.
HOT_HANDLERS = {"/encode": encode, "/reconstruct": reconstruct, "/sample": sample, "/interpolate": interpolate,
                "/anomaly-score": anomaly_score}
MODEL_PREFIXES = ("/models/{name}", "/models/{name}/versions/{version}")
_PATH_PARAMS = {"name": "model name (GET /models lists them)", "version": "version folder name"}
_PINNING = {"name": "X-Model-Version", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "pin a version (canary and default routing do not apply)"}


def _add_model_routes() -> None:
    """The same handlers and documentation for one named model (and one version of it)."""
    for route in [r for r in router.routes if isinstance(r, APIRoute) and r.path in HOT_HANDLERS]:
        for prefix in MODEL_PREFIXES:
            names = [n for n in _PATH_PARAMS if "{" + n + "}" in prefix]
            params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"},
                       "description": _PATH_PARAMS[n]} for n in names]
            extra = {**(route.openapi_extra or {}), "parameters": params + ([] if "version" in names else [_PINNING])}
            router.add_api_route(prefix + route.path, route.endpoint, methods=["POST"], tags=["models"],
                                 response_model=route.response_model,
                                 responses={**route.responses, 404: {"model": schemas.ErrorResponse,
                                                                     "description": "no such model or version"}},
                                 openapi_extra=extra, summary=f"{route.summary} (one model)",
                                 name=f"{route.name}_{'version' if 'version' in names else 'model'}")


_add_model_routes()
