"""GET /drift: every loaded model version's drift report (service/core/drift.py computes them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.http.deps import RegistryDep

router = APIRouter()


@router.get("/drift", summary="Input drift per model version: window, statistics, thresholds, drifting")
async def drift(registry: RegistryDep) -> dict[str, Any]:
    reports = registry.drift.reports()
    return {"drifting": any(r["drifting"] for r in reports), "models": reports}
