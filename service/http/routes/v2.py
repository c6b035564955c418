"""The Open Inference Protocol (KServe v2) over the same batchers and metrics, with Triton's
binary tensor extension (Inference-Header-Content-Length) and repository extension (index, load,
unload), model configuration and statistics extensions (what perf_analyzer reads).

Names: `<model>.<graph>` is one graph of a model; a model's bare name (what the repository index
lists) is its default graph, the scorer without the neighbour bank (`scorer_core`, or `scorer` in
models exported before it); the default model's graphs also answer to bare graph names.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from model.contract import NOISE_INPUT
from service.core.errors import Conflict, InvalidInput, MalformedBody, ModelNotReady, NotFound
from service.core.handle import ModelHandle
from service.core.inputs import InputSpec, check_values, parse_latents
from service.core.registry import LOAD_ERRORS
from service.http.body import read_body, unless_disconnected
from service.http.deps import RegistryDep, SettingsDep, admit_work
from service.http.routes.models import describe
from service.http.schemas import ErrorResponse
from service.settings import Settings

router = APIRouter(prefix="/v2", tags=["KServe v2"], responses={
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (400, "malformed request"), (404, "no such model or version"), (413, "body too large"),
        (422, "invalid tensors"), (429, "queue full"), (503, "not ready"), (504, "queued too long"))})
HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
NAMES = {np.dtype(v).name: k for k, v in DATATYPES.items()}
JSON_TYPES = {str: "a string", list: "an array", bool: "a boolean", int: "a number", float: "a number"}
HEADER_LENGTH_DIGITS = re.compile(r"[0-9]{1,15}")  # ASCII digits only: str.isdigit() takes '²', int() does not


# The infer body as it is (schemathesis: an undeclared body lets an empty POST look valid).
PARAMETERS = {"type": "object", "description": "e.g. binary_data_size (inputs), binary_data (outputs), "
              "binary_data_output (request)"}
INPUT_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "datatype": {"type": "string", "enum": ["FP32", "FP64"]}, "data": {"type": "array"}, "parameters": PARAMETERS}}
OUTPUT_TENSOR = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "parameters": PARAMETERS}}
INFER_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "inputs": {"type": "array", "minItems": 1, "items": INPUT_TENSOR},
        "outputs": {"type": "array", "items": OUTPUT_TENSOR}, "parameters": PARAMETERS}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "JSON header of Inference-Header-Content-Length bytes, then tensors"}}}}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


DEFAULT_GRAPHS = ("scorer_core", "scorer")  # a bare model name's graph: the first the model has


def address(registry: RegistryDep, name: str) -> tuple[str | None, str | None]:
    """(model, graph) of a v2 name: a model's bare name -> (model, None), its default graph;
    `<model>.<graph>` -> (model, graph); any other bare name -> (None, graph) of the default model."""
    if name in registry.models:
        return name, None
    model, dot, graph = name.rpartition(".")
    return (model, graph) if dot else (None, name)


def _graph(handle: ModelHandle, name: str, graph: str | None) -> tuple[str, dict[str, Any]]:
    """The graph a name runs on this handle, and its manifest spec (404 naming the graphs if none)."""
    graphs = handle.runtime.manifest["graphs"]
    graph = graph if graph is not None else next((g for g in DEFAULT_GRAPHS if g in graphs), "scorer")
    if graph not in graphs:
        prefix = f"{handle.name}." if "." in name else ""
        raise NotFound(f"model {name!r} not found; models: {[prefix + g for g in sorted(graphs)]}")
    return graph, graphs[graph]


def _tensor(t: dict[str, Any]) -> dict[str, Any]:
    dims = {"batch": -1, "k": -1}
    return {"name": t["name"], "datatype": NAMES[t["dtype"]], "shape": [dims.get(d, d) for d in t["shape"]]}


def _config_tensor(t: dict[str, Any]) -> dict[str, Any]:
    """A tensor in Triton's model configuration: dims without the batch axis (max_batch_size > 0)."""
    dims = [-1 if d == "k" else d for d in t["shape"][1:]]
    entry: dict[str, Any] = {"name": t["name"], "data_type": f"TYPE_{NAMES[t['dtype']]}", "dims": dims or [1]}
    if not dims:  # one value per item: Triton writes it [1], reshaped to nothing
        entry["reshape"] = {"shape": []}
    return entry


def triton_config(name: str, spec: dict[str, Any], handle: ModelHandle, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration (the fields its clients read) of one graph as this service runs it."""
    onnx = handle.runtime.backend == "onnxruntime"
    return {
        "name": name, "platform": "onnxruntime_onnx" if onnx else "pytorch_libtorch",
        "backend": "onnxruntime" if onnx else "pytorch", "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_batch_size,
        "input": [_config_tensor(t) for t in spec["inputs"]], "output": [_config_tensor(t) for t in spec["outputs"]],
        "dynamic_batching": {"max_queue_delay_microseconds": round(settings.batch_wait_timeout_s * 1e6),
                             "default_queue_policy": {"max_queue_size": settings.max_queue_items}},
        "instance_group": [{"name": name, "kind": "KIND_GPU" if handle.runtime.device == "cuda" else "KIND_CPU",
                            "count": 1}],
    }


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return _json({"name": "vaeserve", "version": "0.1.0", "extensions": [
        "binary_tensor_data", "model_repository", "model_configuration", "statistics"]})


@router.get("/health/live", summary="Server liveness")
async def live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="Server readiness")
async def ready(registry: RegistryDep) -> Response:
    return _json({"ready": registry.ready}, 200 if registry.ready else 503)


@router.get("/models/stats", summary="Statistics of every loaded graph (Triton's statistics extension)")
async def all_statistics(registry: RegistryDep) -> Response:
    stats = [handle.stats[graph].to_triton(f"{entry.source.name}.{graph}", version)
             for entry in registry.models.values() for version, slot in entry.slots.items()
             if (handle := slot.handle) is not None for graph in sorted(handle.stats)]
    return _json({"model_stats": stats})


@router.get("/models/{name}/stats", summary="Statistics of a model's loaded versions")
@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one version")
async def model_statistics(registry: RegistryDep, name: str, version: str | None = None) -> Response:
    model, graph = address(registry, name)
    stats = []
    for v in [version] if version else registry.versions(model):
        try:
            handle = registry.loaded(model, v)  # never loads: a version not loaded has no statistics
        except ModelNotReady:
            handle = None
        if handle is not None:
            stats.append(handle.stats[_graph(handle, name, graph)[0]].to_triton(name, v))
    return _json({"model_stats": stats})


@router.get("/models/{name}/config", summary="Model configuration, in Triton's fields")
@router.get("/models/{name}/versions/{version}/config", summary="Model configuration (one version)")
async def model_configuration(registry: RegistryDep, settings: SettingsDep, name: str,
                              version: str | None = None) -> Response:
    model, graph = address(registry, name)
    async with registry.use(model, version or registry.default_version(model)) as handle:
        spec = _graph(handle, name, graph)[1]
    return _json(triton_config(name, spec, handle, settings))


@router.get("/models/{name}", summary="Model metadata (a model, `<model>.<graph>`, or a graph of the default model)")
@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_metadata(registry: RegistryDep, name: str, version: str | None = None) -> Response:
    model, graph = address(registry, name)
    async with registry.use(model, version or registry.default_version(model)) as handle:
        spec = _graph(handle, name, graph)[1]
    platform = "onnxruntime_onnx" if handle.runtime.backend == "onnxruntime" else "pytorch_libtorch"
    return _json({"name": name, "versions": registry.versions(model), "platform": platform,
                  "inputs": [_tensor(t) for t in spec["inputs"]], "outputs": [_tensor(t) for t in spec["outputs"]]})


@router.get("/models/{name}/ready", summary="Model readiness (loaded and warm)")
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def model_ready(registry: RegistryDep, name: str, version: str | None = None) -> Response:
    model, graph = address(registry, name)
    try:
        handle = registry.loaded(model, version)
        ready = handle is not None and bool(_graph(handle, name, graph))
    except ModelNotReady:
        ready = False
    return _json({"name": name, "ready": ready}, 200 if ready else 503)


@router.post("/models/{name}/infer", summary="Inference (JSON or binary tensors)", openapi_extra=INFER_BODY)
@router.post("/models/{name}/versions/{version}/infer", summary="Inference on one version", openapi_extra=INFER_BODY)
async def infer(request: Request, registry: RegistryDep, settings: SettingsDep, name: str,
                version: str | None = None) -> Response:
    body = await read_body(request, settings)
    model, graph = address(registry, name)
    async with registry.use(model, version) as handle:
        graph, spec = _graph(handle, name, graph)
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        wanted = _requested(header, spec)  # before any work: a wrong output name costs no inference
        feeds = _feeds(header, binary, spec, max_items=settings.max_items_per_request,
                       max_mc_samples=settings.max_mc_samples)
        _check_feeds(feeds, items=handle.spec, latent_dim=handle.latent_dim)
        items = len(next(iter(feeds.values())))
        samples = feeds[NOISE_INPUT].shape[1] if NOISE_INPUT in feeds else 1
        work = admit_work(request, handle.ref, items=items, mc_samples=samples)
        outputs = await unless_disconnected(request, handle.batchers[graph].submit(feeds, member=work),
                                            size=items * samples)
    return _response(header, outputs, wanted, model=name, version=handle.version)


@router.post("/repository/index", summary="Repository index: every model version and its state")
async def repository_index(request: Request, registry: RegistryDep, settings: SettingsDep) -> Response:
    body = await read_body(request, settings)
    try:
        only_ready = bool((orjson.loads(body) if body.strip() else {}).get("ready", False))
    except (orjson.JSONDecodeError, AttributeError):
        raise MalformedBody("repository index request: body must be a JSON object or empty") from None
    states = {"ready": "READY", "loading": "LOADING", "failed": "UNAVAILABLE", "unloaded": "UNAVAILABLE"}
    index = [{"name": m["name"], "version": v["version"], "state": states[v["state"]],
              "reason": v["error"] or ("unloaded" if m["unloaded"] else "")}
             for m in describe(registry)["models"] for v in m["versions"]]
    return _json([entry for entry in index if entry["state"] == "READY" or not only_ready])  # type: ignore[arg-type]


ADMIN_ONLY: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (401, "no or unknown API key"), (403, "not an admin key, or admin routes off"),
    (409, "the model failed to load (the message says why)"))}


@router.post("/repository/models/{name}/load", summary="Load (and warm) every available version of a model (admin)",
             responses=ADMIN_ONLY)
async def repository_load(registry: RegistryDep, name: str) -> Response:
    model = _repository_model(registry, name)
    try:
        await registry.load_model(model)
    except LOAD_ERRORS as exc:
        raise Conflict(f"model {model!r} failed to load: {exc}") from None
    return _json({})


@router.post("/repository/models/{name}/unload", summary="Unload a model; it drains its requests first (admin)",
             responses=ADMIN_ONLY)
async def repository_unload(registry: RegistryDep, name: str) -> Response:
    registry.unload_model(_repository_model(registry, name))
    return _json({})


def _repository_model(registry: RegistryDep, name: str) -> str:
    """The repository's model for a load/unload name: the model itself, or one of its `<model>.<graph>`."""
    model = address(registry, name)[0]
    return model if model is not None and model in registry.models else name


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    size = len(body)
    if header_length is not None:
        if not HEADER_LENGTH_DIGITS.fullmatch(header_length) or int(header_length) > size:
            raise MalformedBody(f"Inference-Header-Content-Length {header_length[:20]!r} is not within the body's "
                                f"{size} bytes")
        size = int(header_length)
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"inference request header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("inputs: the inference request needs a list of input tensors")
    if header.get("outputs") is not None and not isinstance(header["outputs"], list):
        raise InvalidInput(f"outputs: must be a list of output tensors, got {_json_type(header['outputs'])}")
    _parameters(header, field="parameters")
    return header, body[size:]


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), "an object" if isinstance(value, dict) else "null")


def _parameters(owner: dict[str, Any], *, field: str) -> dict[str, Any]:
    """The request's or a tensor's `parameters`: a JSON object, or {} when absent."""
    value = owner.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{field}: must be a JSON object, got {_json_type(value)}")
    return value


def _feeds(header: dict[str, Any], binary: bytes, spec: dict[str, Any], *, max_items: int,
           max_mc_samples: int) -> dict[str, np.ndarray]:
    """Decode every input tensor (JSON data or binary), check names, shapes, batch and values."""
    expected = {t["name"]: t for t in spec["inputs"]}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(header["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) or tensor["name"] not in expected:
            raise InvalidInput(f"inputs[{i}]: name must be one of {sorted(expected)}")
        name, shape, datatype = tensor["name"], tensor.get("shape"), tensor.get("datatype")
        if datatype not in ("FP32", "FP64"):
            raise InvalidInput(f"inputs[{i}] ({name}): datatype must be FP32 (or FP64), got {datatype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidInput(f"inputs[{i}] ({name}): shape must be a list of non-negative integers")
        # The claimed shape is checked before any data is decoded.
        want = expected[name]["shape"]
        if len(shape) != len(want) or any(isinstance(w, int) and w != d for w, d in zip(want, shape)):
            raise InvalidInput(f"inputs[{i}] ({name}): shape {shape} does not match {want}")
        if shape[0] == 0 or shape[0] > max_items:
            raise InvalidInput(f"inputs[{i}] ({name}): batch of {shape[0]} items is outside 1..{max_items}")
        samples = [d for w, d in zip(want, shape) if w == "k"]  # eps: (batch, k, latent), as mc_samples
        if samples and samples[0] > max_mc_samples:
            raise InvalidInput(f"inputs[{i}] ({name}): {samples[0]} Monte Carlo samples (dimension k) exceed "
                               f"the limit of {max_mc_samples} (max_mc_samples)")
        dtype = DATATYPES[datatype]
        size = _parameters(tensor, field=f"inputs[{i}].parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"inputs[{i}] ({name}): binary_data_size {size!r} exceeds the binary payload")
            claimed = math.prod(shape) * np.dtype(dtype).itemsize
            if claimed != size:
                raise InvalidInput(f"inputs[{i}] ({name}): shape {shape} of {datatype} is {claimed} bytes, "
                                   f"binary_data_size is {size}")
        try:
            if size is not None:
                array = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
                offset += size
            else:
                array = np.asarray(tensor.get("data"), dtype=dtype).reshape(shape)
        except (ValueError, TypeError):
            raise InvalidInput(f"inputs[{i}] ({name}): data does not hold numbers of shape {shape}") from None
        with np.errstate(over="ignore"):
            feeds[name] = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(feeds[name]).all():
            raise InvalidInput(f"inputs[{i}] ({name}): contains NaN, infinite or out-of-float32-range values")
    missing = set(expected) - set(feeds)
    if missing:
        raise InvalidInput(f"inputs: missing tensors {sorted(missing)}")
    if len({len(v) for v in feeds.values()}) > 1:
        raise InvalidInput("inputs: all tensors must have the same batch size")
    return feeds


def _check_feeds(feeds: dict[str, np.ndarray], *, items: InputSpec, latent_dim: int) -> None:
    """The values the JSON path refuses, refused here alike: items outside the manifest's range, latents
    beyond its bound (the messages name the tensor and the item)."""
    if "x" in feeds:
        check_values(feeds["x"].reshape(len(feeds["x"]), -1), field="x", spec=items)
    if "z" in feeds:
        z = feeds["z"]  # (batch, latent_dim), finite: the row with the largest magnitude decides
        row = int(np.abs(z).max(axis=1).argmax())
        parse_latents(z[row].tolist(), field=f"z[{row}]", latent_dim=latent_dim)


def _requested(header: dict[str, Any], spec: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, binary?) of each requested output (all by default), checked before inference."""
    names = [t["name"] for t in spec["outputs"]]
    binary_default = bool(_parameters(header, field="parameters").get("binary_data_output", False))
    requested = header.get("outputs") or [{"name": name} for name in names]
    wanted = []
    for i, tensor in enumerate(requested):
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if not isinstance(name, str) or name not in names:
            raise InvalidInput(f"outputs[{i}]: name must be one of {sorted(names)}")
        binary = _parameters(tensor, field=f"outputs[{i}].parameters").get("binary_data", binary_default)
        wanted.append((name, bool(binary)))
    return wanted


def _response(header: dict[str, Any], outputs: dict[str, np.ndarray], wanted: list[tuple[str, bool]], *, model: str,
              version: str) -> Response:
    """The requested outputs; binary where asked, with the header length."""
    tensors, blobs = [], []
    for name, binary in wanted:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": NAMES[array.dtype.name], "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    payload = orjson.dumps({"model_name": model, "model_version": version, "id": header.get("id", ""),
                            "outputs": tensors})
    if not blobs:
        return Response(payload, media_type="application/json")
    return Response(payload + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(payload))})



