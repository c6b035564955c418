"""The model repository's routes: what is there (GET /models) and each model's card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import RegistryDep
from service.ops import card
from service.schemas import ErrorResponse

router = APIRouter(prefix="/models", tags=["models"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such model or version (the message lists them)"},
             503: {"model": ErrorResponse, "description": "loading, failed to load, or unloaded"}}


@router.get("", summary="Every model: versions, which are loaded, default version, traffic policy")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return registry.describe()


@router.get("/{name}", summary="A model's card (its default version)", responses=NOT_FOUND)
async def model_card(registry: RegistryDep, name: str) -> dict[str, Any]:
    async with registry.use(name, registry.default_version(name)) as handle:
        return card(handle)


@router.get("/{name}/versions/{version}", summary="The card of one version of a model", responses=NOT_FOUND)
async def version_card(registry: RegistryDep, name: str, version: str) -> dict[str, Any]:
    async with registry.use(name, version) as handle:
        return card(handle)
