"""The jobs as callers see them: accept one (limits first, then every item checked), its status with
progress, rate and time left, its result, cancel and delete. Running them is runner.py's."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from service.core.bulk import ScoreOptions, chunks
from service.core.errors import Conflict, InvalidInput, NotFound, Overloaded
from service.core.jobs.inputs import load_items, unzip_images
from service.core.jobs.runner import JobRunner
from service.core.registry import ModelRegistry
from service.core.store import ACTIVE_JOB_STATES, Store
from service.core.thresholds import ThresholdPolicies
from service.settings import Settings

PUBLIC = ("id", "state", "model", "version", "options", "items", "done", "created_at", "started_at", "finished_at",
          "attempts", "error", "threshold")


class JobBoard:
    def __init__(self, *, settings: Settings, store: Store, registry: ModelRegistry, runner: JobRunner,
                 thresholds: ThresholdPolicies) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.runner = runner
        self.thresholds = thresholds

    async def check_capacity(self) -> None:
        """Overloaded (429) when max_active_jobs are already queued or running: before any upload is read."""
        active = await asyncio.to_thread(self.store.jobs, ACTIVE_JOB_STATES)
        if len(active) >= self.settings.max_active_jobs:
            raise Overloaded(f"{len(active)} jobs are queued or running (limit {self.settings.max_active_jobs}); "
                             "retry when one ends", retry_after_s=30)

    def new_folder(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        folder = self.runner.folder(job_id)
        folder.mkdir(parents=True, exist_ok=False)
        return job_id, folder

    async def submit(self, *, job_id: str, source: Path, fmt: str, model: str | None, version: str | None,
                     options: ScoreOptions, uploaded: bool) -> dict[str, Any]:
        """Accept a job whose file is at `source` (an upload in the job's folder, or a checked input path)."""
        folder = self.runner.folder(job_id)
        try:
            return await self._submit(job_id, source, fmt, model, version, options, uploaded, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def _submit(self, job_id: str, source: Path, fmt: str, model: str | None, version: str | None,
                      options: ScoreOptions, uploaded: bool, folder: Path) -> dict[str, Any]:
        s = self.settings
        if options.mc_samples > s.max_mc_samples:
            raise InvalidInput(f"mc_samples: {options.mc_samples} exceeds the limit of {s.max_mc_samples}")
        if fmt == "zip":
            source = await asyncio.to_thread(unzip_images, source, folder / "images", max_items=s.max_job_items,
                                             max_bytes=s.max_job_upload_bytes)
        async with self.registry.use(model, version) as handle:
            handle.scoring.scorer(options.score)  # InvalidInput for a variant the model cannot compute
            threshold, quantile = self.thresholds.served(handle, options.score, target_fpr=options.target_fpr,
                                                         contamination=options.contamination)
            items = await asyncio.to_thread(load_items, source, spec=handle.spec, max_items=s.max_job_items)
            ref = handle.ref
        try:
            next(iter(chunks(len(items), options)))
        except ValueError as exc:
            raise InvalidInput(str(exc).replace("--", "")) from None
        await self.check_capacity()
        job = {"id": job_id, "state": "queued", "created_at": time.time(), "model": ref["name"],
               "version": ref["version"], "options": dataclasses.asdict(options), "input": str(source),
               "input_kind": "upload" if uploaded else "path", "items": len(items), "done": 0,
               "threshold": threshold, "threshold_quantile": quantile, "attempts": 0}
        await asyncio.to_thread(self.store.add_job, job)
        self.runner.wake()
        return self.view(job)

    async def status(self, job_id: str) -> dict[str, Any]:
        job = await asyncio.to_thread(self.store.job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (finished jobs are kept {self.settings.job_retention_s:g} s)")
        return self.view(job)

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        """What GET /jobs/{id} shows: progress, items per second and the time left."""
        out = {k: job.get(k) for k in PUBLIC}
        items, done, rate = job.get("items") or 0, job.get("done") or 0, job.get("items_per_s")
        out["progress"] = done / items if items else 0.0
        out["items_per_s"] = rate if job["state"] == "running" else None
        out["seconds_left"] = (items - done) / rate if job["state"] == "running" and rate else None
        if job["state"] == "succeeded" and job.get("started_at") and job.get("finished_at"):
            out["items_per_s"] = items / max(job["finished_at"] - job["started_at"], 1e-9)
        return out

    async def result(self, job_id: str) -> Path:
        job = await self.status(job_id)
        if job["state"] != "succeeded":
            raise Conflict(f"job {job_id} is {job['state']}; its result exists once it has succeeded"
                           + (f" ({job['error']})" if job.get("error") else ""))
        return self.runner.result_path(job_id)

    async def cancel_or_delete(self, job_id: str) -> dict[str, Any]:
        """A queued or running job is cancelled (its folder kept until retention); a finished one is deleted."""
        job = await self.status(job_id)
        if job["state"] in ACTIVE_JOB_STATES:
            changed = await asyncio.to_thread(self.store.update_job, job_id, only_if_state=ACTIVE_JOB_STATES,
                                              state="cancelled", finished_at=time.time())
            await self.runner.cancel(job_id)
            if changed:
                return await self.status(job_id)
            job = await self.status(job_id)  # it finished meanwhile: delete it as a finished one
        await asyncio.to_thread(self.store.delete_job, job_id)
        await asyncio.to_thread(shutil.rmtree, self.runner.folder(job_id), True)
        return {**job, "deleted": True}



