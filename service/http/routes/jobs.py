"""Bulk scoring jobs: POST /jobs (an upload, or a path under the input directory) -> 202 and an id;
GET /jobs/{id} (state, progress, items/s, time left); GET /jobs/{id}/result (the CSV of `vaeserve
score`); DELETE /jobs/{id} (cancel; a finished job is deleted). docs/feedback-and-jobs.md."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import Field

from model.contract import DEFAULT_MC_SAMPLES, DEFAULT_SCORE_VARIANT, MAX_SEED, ScoreVariant
from service.core.bulk import ScoreOptions
from service.core.errors import BodyTooLarge, ClientDisconnected, InvalidInput
from service.core.jobs import JobBoard, format_of, under_input_dir
from service.http.body import media_type, read_request, validate_options
from service.http.routes.feedback import book_of
from service.http.schemas import ErrorResponse, Options

router = APIRouter(prefix="/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "malformed JSON"), (403, "a path outside the input directory"), (408, "body too slow"),
                       (415, "wrong content type"), (404, "no such job, model or file"),
                       (409, "no result yet"), (413, "an upload or job over the limits"),
                       (422, "a bad upload or option (the message names it)"), (429, "too many jobs at once"),
                       (503, "the store is not available"))}


TEXT_PARAMS = ("model", "version", "filename")  # "1" is a version name, not a number


class JobOptions(Options):
    model: str | None = Field(None, description="the model (default: the default model)")
    version: str | None = Field(None, description="its version (default: the primary, fixed when the job starts)")
    score: ScoreVariant = DEFAULT_SCORE_VARIANT
    mc_samples: int = Field(DEFAULT_MC_SAMPLES, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="chunk c is scored with seed + c, as `vaeserve score`")
    target_fpr: float | None = Field(None, gt=0, lt=1)
    contamination: float | None = Field(None, gt=0, lt=0.5)
    chunk_size: int = Field(256, ge=1, le=4096, description="items per chunk (`vaeserve score --chunk-size`)")


class PathJob(JobOptions):
    path: str = Field(..., description="a file or PNG folder under the service's input directory")


class UploadJob(JobOptions):
    filename: str | None = Field(None, description="the upload's name; its extension gives the format "
                                 "(.npy, .csv, .parquet, .zip of PNGs)")


def jobs_of(request: Request) -> JobBoard:
    return book_of(request).jobs


def score_options(options: JobOptions) -> ScoreOptions:
    return ScoreOptions(score=options.score, mc_samples=options.mc_samples, seed=options.seed,
                        target_fpr=options.target_fpr, contamination=options.contamination,
                        chunk_size=options.chunk_size)


@router.post("", status_code=202, responses=ERRORS,
             summary="Start a job: a raw upload (options as query parameters) or JSON {\"path\": ...}")
async def create_job(request: Request) -> JSONResponse:
    jobs, settings = jobs_of(request), request.app.state.settings
    await jobs.check_capacity()  # before reading a large upload
    if media_type(request.headers.get("content-type")).endswith("json"):
        options: JobOptions = validate_options(PathJob, await read_request(request, settings))
        assert isinstance(options, PathJob)
        source, fmt, uploaded = under_input_dir(options.path, settings.input_dir), "path", False
        job_id, _ = jobs.new_folder()
    else:
        options = validate_options(UploadJob, {k: v if k in TEXT_PARAMS else _query_value(v)
                                               for k, v in request.query_params.items()})
        assert isinstance(options, UploadJob)
        fmt = format_of(options.filename, request.headers.get("content-type"))
        job_id, folder = jobs.new_folder()
        source, uploaded = folder / f"upload.{fmt}", True
        try:
            await _save_body(request, source, limit=settings.max_job_upload_bytes)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    if fmt == "path":
        fmt = "zip" if source.suffix.lower() == ".zip" else source.suffix.lower().lstrip(".")
    job = await jobs.submit(job_id=job_id, source=source, fmt=fmt, model=options.model, version=options.version,
                            options=score_options(options), uploaded=uploaded)
    return JSONResponse(job, status_code=202, headers={"Location": f"/jobs/{job_id}"})


def _query_value(text: str) -> Any:
    """Numbers and booleans from the query string; everything else stays a string."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


async def _save_body(request: Request, path: Path, *, limit: int) -> None:
    """Stream the body to path; 413 as soon as it passes the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"upload of {declared} bytes exceeds the job limit of {limit}", linger_s=1.0, linger_bytes=0)
    size = 0
    with path.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"upload exceeds the job limit of {limit} bytes", linger_s=1.0, linger_bytes=0)
            out.write(chunk)
    if size == 0:
        if await request.is_disconnected():
            raise ClientDisconnected("client disconnected during the upload")
        raise InvalidInput("upload: the body is empty; send the file as the body, or JSON {\"path\": ...}")


@router.get("", summary="Every job kept (newest last)")
async def list_jobs(request: Request) -> dict[str, Any]:
    jobs = jobs_of(request)
    return {"jobs": [jobs.view(j) for j in await asyncio.to_thread(jobs.store.jobs)]}


@router.get("/{job_id}", summary="A job's state, progress, items per second and time left", responses=ERRORS)
async def job_status(request: Request, job_id: str) -> dict[str, Any]:
    return await jobs_of(request).status(job_id)


@router.get("/{job_id}/result", summary="The job's CSV, as `vaeserve score` writes it", responses=ERRORS,
            response_class=FileResponse)
async def job_result(request: Request, job_id: str) -> FileResponse:
    path = await jobs_of(request).result(job_id)
    return FileResponse(path, media_type="text/csv", filename=f"{job_id}.csv")


@router.delete("/{job_id}", summary="Cancel a queued or running job; delete a finished one", responses=ERRORS)
async def delete_job(request: Request, job_id: str) -> dict[str, Any]:
    return await jobs_of(request).cancel_or_delete(job_id)
