"""Threshold policies from feedback: recalibrate (admin), revert (admin), and the history. A new
threshold is served by the version at once, with no reload (service/core/thresholds.py)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field

from model.contract import DEFAULT_SCORE_VARIANT, ScoreVariant
from service.core.errors import Conflict
from service.core.handle import ModelHandle
from service.core.recalibrate import choose_threshold
from service.http.body import read_request, validate_options
from service.http.deps import app_services
from service.http.routes.feedback import book_of, current_threshold, model_name_of
from service.http.schemas import ErrorResponse, Options

router = APIRouter(tags=["feedback"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed JSON"}, 413: {"model": ErrorResponse},
    415: {"model": ErrorResponse, "description": "wrong content type"}, 503: {"model": ErrorResponse},
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse, "description": "not an admin key"},
    404: {"model": ErrorResponse}, 409: {"model": ErrorResponse, "description": "the labels cannot reach the goal"},
    422: {"model": ErrorResponse}}


class RecalibrateRequest(Options):
    goal: Literal["target_fpr", "precision", "f1"] = Field(..., description="what the threshold is for")
    target: float | None = Field(None, gt=0, lt=1, description="the false-positive rate or precision to reach")
    version: str | None = Field(None, description="the version to recalibrate (default: the primary)")
    score: ScoreVariant = Field(DEFAULT_SCORE_VARIANT, description="the score variant")
    prevalence: float | None = Field(None, gt=0, lt=1, description="share of anomalies in the traffic, for "
                                     "precision and F1 (default: the labelled share)")
    dry_run: bool = Field(False, description="choose and report, but keep serving the current threshold")


class RevertRequest(Options):
    version: str | None = None
    score: ScoreVariant = DEFAULT_SCORE_VARIANT


def calibration_scores(handle: ModelHandle, variant: str) -> tuple[np.ndarray, str]:
    """The export's normal calibration scores (or, for older exports, its quantile grid as a sample)."""
    exact = handle.calibration.get("sorted_scores", {}).get(variant)
    if exact is not None:
        return np.asarray(exact, dtype=np.float64), "calibration scores"
    grid = handle.scoring.grids.get(variant)
    return (np.asarray(grid, dtype=np.float64), "calibration quantile grid") if grid is not None else (np.empty(0), "none")


@router.post("/models/{name}/threshold/recalibrate", responses=ERRORS,
             summary="Choose a version's threshold from the labels and the calibration data (admin key)")
async def recalibrate(request: Request, name: str) -> dict[str, Any]:
    registry, settings = app_services(request)
    options = validate_options(RecalibrateRequest, await read_request(request, settings))
    model, book = model_name_of(registry, name), book_of(request)
    rows = await asyncio.to_thread(book.store.feedback, model)
    async with registry.use(model, options.version) as handle:
        version = handle.version
        labelled = [r for r in rows if r.version == version and r.variant == options.score]
        anomalies = np.array([r.score for r in labelled if r.label == "anomaly"], dtype=np.float64)
        normals = np.array([r.score for r in labelled if r.label == "normal"], dtype=np.float64)
        calibration, source = calibration_scores(handle, options.score)
        choice = choose_threshold(goal=options.goal, target=options.target, anomalies=anomalies, normals=normals,
                                  calibration=calibration, prevalence=options.prevalence)
        quantile = float(handle.scoring.percentiles(options.score, np.array([choice.threshold]))[0] / 100.0)
    previous = await current_threshold(registry, book, model, version, options.score)
    goal = {"goal": options.goal, "target": options.target, "prevalence": options.prevalence,
            "labels": {"anomaly": len(anomalies), "normal": len(normals)}, "normal_scores": source,
            "calibration_count": len(calibration), "estimates": choice.estimates}
    answer = {"model": model, "version": version, "score_variant": options.score, "threshold": choice.threshold,
              "quantile": quantile, "previous": {"threshold": previous[0], "source": previous[1]}, **goal,
              "dry_run": options.dry_run, "revision": None}
    if not options.dry_run:
        row = await book.thresholds.write(model=model, version=version, variant=options.score,
                                          threshold=choice.threshold, quantile=quantile, goal=goal)
        answer["revision"] = row.revision
    return answer


@router.post("/models/{name}/threshold/revert", responses=ERRORS,
             summary="Serve the threshold the last recalibration replaced (admin key)")
async def revert(request: Request, name: str) -> dict[str, Any]:
    registry, settings = app_services(request)
    has_body = request.headers.get("content-length", "0") != "0"
    options = validate_options(RevertRequest, await read_request(request, settings) if has_body else {})
    model, book = model_name_of(registry, name), book_of(request)
    version = options.version or registry.default_version(model)
    try:
        reverted, active = await book.thresholds.revert(model=model, version=version, variant=options.score)
    except LookupError as exc:
        raise Conflict(str(exc)) from None
    now = await current_threshold(registry, book, model, version, options.score)
    return {"model": model, "version": version, "score_variant": options.score, "reverted": reverted.revision,
            "active_revision": active.revision if active else None, "threshold": now[0], "source": now[1]}


@router.get("/models/{name}/threshold", summary="A model's threshold revisions, newest last", responses=ERRORS)
async def history(request: Request, name: str) -> dict[str, Any]:
    registry, _ = app_services(request)
    model, book = model_name_of(registry, name), book_of(request)
    revisions = await book.thresholds.history(model)
    return {"model": model, "revisions": [{"revision": r.revision, "version": r.version, "score_variant": r.variant,
                                           "threshold": r.threshold, "quantile": r.quantile, "active": r.active,
                                           "replaced": r.replaced, "created_at": r.created_at, **r.goal}
                                          for r in revisions]}
