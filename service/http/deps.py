"""Named dependencies of the routes: the registry, the settings, the model a request addresses, and
the quota step a parsed request passes (admit_work)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from service.core.errors import QuotaExceeded
from service.core.registry import ModelRegistry
from service.core.work import Work
from service.http.requests import record_of
from service.settings import Settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def app_services(request: Request) -> tuple[ModelRegistry, Settings]:
    """The registry and settings for the hot routes, without FastAPI's dependency resolution,
    which measured ~9% of the server's time per single-item request."""
    state = request.app.state
    return state.registry, state.settings


def admit_work(request: Request, model: Mapping[str, str], *, items: int, mc_samples: int = 1) -> Work | None:
    """The quota step of a parsed request: say what it asks of the model (logged and traced), and
    charge its items x samples to its key's quota (QuotaExceeded, PayloadTooLarge) before anything
    is queued. Returns the request's Work for the handle's operations."""
    record = record_of(request.scope)
    if record is None:  # a request that did not pass the edge (in-process tests of a route)
        return None
    record.model, record.items, record.mc_samples = model, items, mc_samples
    if record.quota is not None:
        try:
            request.app.state.quota_gate.charge_items(record.quota, items * mc_samples)
        except QuotaExceeded:
            record.rejection = "quota"
            raise
    return record


def model_address(request: Request) -> tuple[str | None, str | None]:
    """(model, version) a request asks for: the /models/{name}[/versions/{version}] prefix, else the
    default model; a version from the path, else the X-Model-Version header, else the policy's."""
    params = request.scope.get("path_params") or {}
    version = params.get("version")
    if version is None:
        for key, value in request.scope["headers"]:
            if key == b"x-model-version":
                version = value.decode("latin-1").strip()
    return params.get("name"), version
