"""Labelled feedback: POST /models/{name}/feedback (and /feedback for the default model) and GET
.../feedback/summary. The rules (a label arriving twice, a score_id of another model) are in
service/core/feedback.py and docs/feedback-and-jobs.md."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field

from model.contract import DEFAULT_MC_SAMPLES, DEFAULT_SCORE_VARIANT, MAX_SEED, ScoreVariant, score_output
from service.core.bookkeeping import Bookkeeping
from service.core.errors import InvalidInput, NotFound, PayloadTooLarge
from service.core.feedback import summarize
from service.core.handle import ModelHandle
from service.core.registry import ModelRegistry
from service.core.store import FeedbackRow
from service.core.table_inputs import parse_model_items
from service.http.body import read_request, validate_options
from service.http.deps import admit_work, app_services
from service.http.schemas import ErrorResponse, Options

router = APIRouter(tags=["feedback"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed JSON"},
    404: {"model": ErrorResponse, "description": "no such model"},
    413: {"model": ErrorResponse, "description": "too many items or too large a body"},
    415: {"model": ErrorResponse, "description": "wrong content type"},
    429: {"model": ErrorResponse, "description": "queue full (items sent for scoring)"},
    504: {"model": ErrorResponse, "description": "an item waited too long to be scored"},
    422: {"model": ErrorResponse, "description": "a bad item: the message names it (items[i].field)"},
    503: {"model": ErrorResponse, "description": "the store is not available"}}


class FeedbackItem(Options):
    score_id: str | None = Field(None, description="the score_id of an /anomaly-score result")
    item: list[Any] | dict[str, Any] | str | None = Field(None, description="or the item itself (scored now, as a one-item "
                                         "/anomaly-score request with these options)")
    version: str | None = Field(None, description="with `item`: the version that scored it (default: the primary)")
    label: Literal["anomaly", "normal"]


class FeedbackRequest(Options):
    items: list[FeedbackItem] = Field(..., min_length=1)
    score: ScoreVariant = Field(DEFAULT_SCORE_VARIANT, description="with `item` entries: the score variant")
    mc_samples: int = Field(DEFAULT_MC_SAMPLES, ge=1, description="with `item` entries: Monte Carlo samples")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="with `item` entries: the noise seed")


def book_of(request: Request) -> Bookkeeping:
    return request.app.state.bookkeeping


@router.post("/feedback", summary="Label scored items of the default model (anomaly | normal)", responses=ERRORS)
@router.post("/models/{name}/feedback", summary="Label scored items (anomaly | normal)", responses=ERRORS)
async def post_feedback(request: Request, name: str | None = None) -> dict[str, Any]:
    registry, settings = app_services(request)
    body = validate_options(FeedbackRequest, await read_request(request, settings))  # 422 naming the field
    if len(body.items) > settings.max_items_per_request:
        raise PayloadTooLarge(f"items: {len(body.items)} exceed the limit of {settings.max_items_per_request}")
    model = model_name_of(registry, name)
    book = book_of(request)
    rows: dict[int, FeedbackRow] = {}
    for i, entry in enumerate(body.items):
        if (entry.score_id is None) == (entry.item is None):
            raise InvalidInput(f"items[{i}]: give exactly one of score_id and item")
        if entry.score_id is not None:
            rows[i] = _from_score_id(book, entry, model=model, field=f"items[{i}]")
    pending = [i for i, e in enumerate(body.items) if e.item is not None]
    scored = await asyncio.gather(*(_from_item(request, registry, body, i, model=model) for i in pending))
    rows.update(zip(pending, scored))
    seen: dict[str, int] = {}
    for i in range(len(body.items)):
        first = seen.setdefault(rows[i].id, i)
        if first != i:
            raise InvalidInput(f"items[{first}] and items[{i}]: the same item twice in one request; send one label")
    ordered = [rows[i] for i in range(len(body.items))]
    outcomes = await asyncio.to_thread(book.store.put_feedback, ordered)
    return {"model": model, "received": len(ordered), **{k: outcomes.count(k) for k in ("created", "updated", "unchanged")},
            "items": [{"id": r.id, "outcome": o, "version": r.version, "score_variant": r.variant, "score": r.score,
                       "label": r.label} for r, o in zip(ordered, outcomes)]}


def model_name_of(registry: ModelRegistry, name: str | None) -> str:
    """The model's name (the default model's for the un-prefixed routes); 404 if unknown."""
    registry.default_version(name)  # NotFound naming the models there are
    resolved = name if name is not None else registry.default
    assert resolved is not None, "default_version found a default model"
    return resolved


def _from_score_id(book: Bookkeeping, entry: FeedbackItem, *, model: str, field: str) -> FeedbackRow:
    record = book.ids.read(entry.score_id, field=f"{field}.score_id")
    if record.model != model:
        raise InvalidInput(f"{field}.score_id: it was issued by model {record.model!r} (version {record.version}), "
                           f"not {model!r}; send it to /models/{record.model}/feedback")
    return FeedbackRow(f"sid:{record.key}", record.model, record.version, record.variant, record.score,
                       record.threshold, record.flagged, entry.label, "score_id")


async def _from_item(request: Request, registry: ModelRegistry, body: FeedbackRequest, i: int, *, model: str
                     ) -> FeedbackRow:
    """Score the item as a one-item /anomaly-score request with the body's options would."""
    entry = body.items[i]
    async with registry.use(model, entry.version) as handle:
        row = await _score_item(request, handle, body, entry, field=f"items[{i}].item")
    return row


async def _score_item(request: Request, handle: ModelHandle, body: FeedbackRequest, entry: FeedbackItem, *,
                      field: str) -> FeedbackRow:
    x, _, _ = parse_model_items([entry.item], field=field, spec=handle.spec, max_items=1)
    work = admit_work(request, handle.ref, items=1, mc_samples=body.mc_samples)
    out = await handle.score(x, variant=body.score, mc_samples=body.mc_samples, seed=body.seed, work=work)
    score = float(out[score_output(body.score)][0])
    threshold, _ = book_of(request).served_threshold(handle, body.score)
    digest = hashlib.sha256(f"{handle.name}\0{handle.version}\0{body.score}\0{body.mc_samples}\0{body.seed}\0".encode()
                            + x.tobytes()).hexdigest()[:32]
    return FeedbackRow(f"item:{digest}", handle.name, handle.version, body.score, score, threshold,
                       score > threshold, entry.label, "item")


@router.get("/feedback/summary", summary="Live precision, recall and false-alarm rate of the default model",
            responses=ERRORS)
@router.get("/models/{name}/feedback/summary", summary="Live precision, recall and false-alarm rate per version, "
            "at the current threshold, with 95% Wilson intervals", responses=ERRORS)
async def feedback_summary(request: Request, name: str | None = None) -> dict[str, Any]:
    registry, _ = app_services(request)
    model = model_name_of(registry, name)
    book = book_of(request)
    rows = await asyncio.to_thread(book.store.feedback, model)
    current: dict[tuple[str, str], tuple[float | None, str]] = {}
    for version, variant in sorted({(r.version, r.variant) for r in rows}):
        current[(version, variant)] = await current_threshold(registry, book, model, version, variant)
    return {"model": model, "versions": summarize(rows, lambda v, s: current[(v, s)])}


async def current_threshold(registry: ModelRegistry, book: Bookkeeping, model: str, version: str, variant: str
                            ) -> tuple[float | None, str]:
    """(the threshold the version serves for the variant now, where it comes from)."""
    override = book.override(model, version, variant)
    if override is not None:
        return override.threshold, f"recalibrated (revision {override.revision})"
    try:
        async with registry.use(model, version) as handle:
            return handle.scoring.threshold(variant)[0], "manifest"
    except (NotFound, InvalidInput) as exc:
        return None, f"not available: {exc.message}"
