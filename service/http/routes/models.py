"""The model repository's routes: what is there (GET /models) and each model's card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.core.registry import ModelEntry, ModelRegistry
from service.http.deps import RegistryDep
from service.http.routes.cards import card
from service.http.schemas import ErrorResponse

router = APIRouter(prefix="/models", tags=["models"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such model or version (the message lists them)"},
             503: {"model": ErrorResponse, "description": "loading, failed to load, or unloaded"}}


def describe(registry: ModelRegistry) -> dict[str, Any]:
    """Every model, its versions and their states: GET /models and the v2 repository index."""
    models = []
    for name, entry in sorted(registry.models.items()):
        versions = [{"version": v, "state": s.state, "ready": s.handle is not None, "error": s.error,
                     "path": str(s.source.path), "traffic": _share(entry, v),
                     "memory_bytes": s.memory_bytes if s.handle is not None else None}
                    for v, s in entry.slots.items()]
        models.append({"name": name, "default": name == registry.default, "default_version": entry.primary,
                       "policy": entry.policy.to_dict(), "unloaded": entry.unloaded_by_admin,
                       "problem": entry.source.problem, "versions": versions})
    settings = registry.settings
    return {"default_model": registry.default, "max_loaded_models": settings.max_loaded_models or None,
            "max_loaded_bytes": settings.max_loaded_bytes or None, "loaded_bytes": registry.loader.loaded_bytes(),
            "precision": settings.precision, "models": models}


def _share(entry: ModelEntry, version: str) -> float:
    """The share of un-pinned requests a version gets: its canary share, the rest for the primary."""
    canary = entry.policy.canary
    return canary.get(version, 0.0) + (1.0 - sum(canary.values()) if version == entry.primary else 0.0)


@router.get("", summary="Every model: versions, which are loaded, default version, traffic policy")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return describe(registry)


@router.get("/{name}", summary="A model's card (its default version)", responses=NOT_FOUND)
async def model_card(registry: RegistryDep, name: str) -> dict[str, Any]:
    async with registry.use(name, registry.default_version(name)) as handle:
        return card(handle)


@router.get("/{name}/versions/{version}", summary="The card of one version of a model", responses=NOT_FOUND)
async def version_card(registry: RegistryDep, name: str, version: str) -> dict[str, Any]:
    async with registry.use(name, version) as handle:
        return card(handle)
