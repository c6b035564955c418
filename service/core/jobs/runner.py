"""Running bulk jobs inside the service: the same CSV as `vaeserve score`, through the same batchers,
after the online requests.

A job scores chunk c of its file with seed `seed + c` (service/core/bulk.py), so its CSV is the one
`vaeserve score --url` writes for the same options. Each chunk goes to the model's batcher in small
batches (job_batch_items), and each batch waits its turn: until no online request is in flight nor
queued for that graph, for job_idle_s. An online request then never waits behind more than one small
job batch, and a job uses the capacity the online traffic leaves (under saturating traffic it waits).

Any worker may run any job: claiming is one transaction in the store. Progress (the rows scored so
far, in a float64 file under the job's folder) is committed every PROGRESS_EVERY_S with a heartbeat.
A job whose owner died (kill -9, a crash) is resumed from its last committed rows by the first worker
that sees it: at once when the owner was a process on this host that no longer exists, else when its
heartbeat is LEASE_S old. A graceful shutdown hands its jobs back to the queue. A job is never lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.contract import NOISE_INPUT
from service.core.batcher import DynamicBatcher
from service.core.bulk import COLUMNS, BulkScores, ScoreOptions, chunks, result_columns, write_csv
from service.core.errors import ServiceError
from service.core.inputs import parse_items
from service.core.itemfiles import Items, read_items
from service.core.noise import standard_normal
from service.core.registry import ModelRegistry
from service.core.store import ACTIVE_JOB_STATES, Store
from service.settings import Settings

log = logging.getLogger("vaeserve.jobs")
LEASE_S = 15.0  # a running job whose heartbeat is this old is taken over
SWEEP_S = 1.0
PROGRESS_EVERY_S = 0.5
POLL_S = 0.0005
PARTIAL = "partial.npy"
RESULT = "result.csv"


class JobCancelled(Exception):
    """The job was cancelled (or taken over) while this worker ran it."""


class JobRunner:
    """This worker's share of the jobs: it claims queued and orphaned ones and runs them."""

    def __init__(self, *, settings: Settings, store: Store, registry: ModelRegistry,
                 quiet_s: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.quiet_s = quiet_s  # seconds since the last online request ended (0: one is in flight)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._wakeup = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    def folder(self, job_id: str) -> Path:
        return self.settings.data_dir / "jobs" / job_id

    def result_path(self, job_id: str) -> Path:
        return self.folder(job_id) / RESULT

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop sweeping; hand this worker's running jobs back to the queue (another start resumes them)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        self._wakeup.set()

    async def cancel(self, job_id: str) -> None:
        """Stop the job at once if this worker runs it (the store already says cancelled)."""
        task = self.running.get(job_id)
        if task is not None:
            self._cancelled.add(job_id)
            task.cancel()

    # ---- claiming ----------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a locked store must not stop the sweeps
                log.exception("job sweep failed; retrying")
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), SWEEP_S)
            except asyncio.TimeoutError:
                pass

    async def sweep(self) -> None:
        """Claim queued and orphaned jobs up to max_active_jobs; delete finished ones past retention."""
        now = time.time()
        for job in await asyncio.to_thread(self.store.jobs, ACTIVE_JOB_STATES):
            if len(self.running) >= self.settings.max_active_jobs:
                break
            if job["id"] in self.running or not (job["state"] == "queued" or self._orphaned(job, now)):
                continue
            if job["state"] == "running":
                log.warning("job %s: its worker %s is gone; resuming it from item %d", job["id"], job.get("owner"),
                            job.get("done", 0))
            if await asyncio.to_thread(self.store.claim_job, job["id"], owner=self.owner,
                                       expected_owner=job.get("owner"), now=now):
                self.running[job["id"]] = asyncio.get_running_loop().create_task(self._run(job["id"]))
        await asyncio.to_thread(self._expire, now)

    def _orphaned(self, job: dict[str, Any], now: float) -> bool:
        owner = str(job.get("owner") or "")
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if host == self.host and pid.isdigit() and owner != self.owner and not _alive(int(pid), self.pid):
            return True
        return now - float(job.get("heartbeat_at") or 0) > LEASE_S

    def _expire(self, now: float) -> None:
        for job in self.store.jobs(("succeeded", "failed", "cancelled")):
            if now - float(job.get("finished_at") or now) > self.settings.job_retention_s:
                shutil.rmtree(self.folder(job["id"]), ignore_errors=True)
                self.store.delete_job(job["id"])

    # ---- running -----------------------------------------------------------------------------
    async def _run(self, job_id: str) -> None:
        beat = asyncio.get_running_loop().create_task(self._heartbeat(job_id))
        try:
            await self._execute(job_id)
        except JobCancelled:
            log.info("job %s cancelled", job_id)
        except asyncio.CancelledError:
            if job_id not in self._cancelled:  # shutdown: back to the queue, resumed by the next start
                await asyncio.shield(asyncio.to_thread(self.store.update_job, job_id, only_if_state=("running",),
                                                       state="queued", owner=None))
                raise
        except ServiceError as exc:
            await self._fail(job_id, exc.message)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            await self._fail(job_id, f"internal error: {exc}")
        finally:
            beat.cancel()
            self.running.pop(job_id, None)
            self._cancelled.discard(job_id)
            self.wake()

    async def _heartbeat(self, job_id: str) -> None:
        """Keep the claim fresh while the job waits for its turn (busy online traffic), so no other
        worker takes it over; it makes no progress then, and that is not a death."""
        while True:
            await asyncio.sleep(LEASE_S / 5)
            await asyncio.to_thread(self.store.update_job, job_id, only_if_state=("running",),
                                    only_if_owner=self.owner, heartbeat_at=time.time())

    async def _fail(self, job_id: str, message: str) -> None:
        await asyncio.to_thread(self.store.update_job, job_id, only_if_state=("running",), state="failed",
                                error=message, finished_at=time.time())

    async def _execute(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.job, job_id)
        assert job is not None, f"claimed job {job_id} has a row"
        options = ScoreOptions(**job["options"])
        async with self.registry.use(job["model"], job["version"]) as handle:
            spec = handle.spec
        items = await asyncio.to_thread(read_items, Path(job["input"]), spec=spec)
        partial, done = await asyncio.to_thread(_open_partial, self.folder(job_id) / PARTIAL, len(items),
                                                int(job.get("done", 0)))
        start_done = done
        started = last_commit = time.monotonic()
        for part, seed in chunks(len(items), options):
            if part.stop <= done:
                continue
            values = await self._score_chunk(job, items, part, seed, options)
            partial[part] = np.column_stack([values[name].astype(np.float64) for name in COLUMNS])
            done = part.stop
            if time.monotonic() - last_commit >= PROGRESS_EVERY_S or done == len(items):
                rate = (done - start_done) / max(time.monotonic() - started, 1e-9)
                await self._commit(job_id, partial, done=done, items_per_s=rate)
                last_commit = time.monotonic()
        await asyncio.to_thread(self._finish, job, partial, items)

    async def _score_chunk(self, job: dict[str, Any], items: Items, part: slice, seed: int, options: ScoreOptions
                           ) -> dict[str, np.ndarray]:
        """One chunk, as /anomaly-score with this seed scores it, handed to the batcher in small batches."""
        async with self.registry.use(job["model"], job["version"]) as handle:
            x, _ = parse_items(np.ascontiguousarray(items.array[part]), field="inputs", spec=handle.spec,
                               max_items=part.stop - part.start)
            graph = handle.scoring.scorer(options.score)
            eps = standard_normal(seed, (len(x), options.mc_samples, handle.latent_dim))  # the chunk's noise, whole
            step = self.settings.job_batch_items
            outs = []
            for at in range(0, len(x), step):
                await self._turn(handle.batchers[graph])
                outs.append(await handle.batchers[graph].submit({"x": x[at:at + step], NOISE_INPUT: eps[at:at + step]}))
            out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
            return result_columns(handle.scoring, options.score, out, float(job["threshold"]))

    async def _turn(self, batcher: DynamicBatcher) -> None:
        """Wait until nothing online has been in flight for job_idle_s and nothing is queued for the graph.
        (Measured from when the last request ended, not by sampling: a request run inline holds the
        loop, and a sampler would never see it.)"""
        while batcher.queued_items or self.quiet_s() < self.settings.job_idle_s:
            await asyncio.sleep(POLL_S)

    async def _commit(self, job_id: str, partial: np.ndarray, *, done: int, items_per_s: float) -> None:
        """Rows to disk first, then the progress that points at them; JobCancelled when the job is no
        longer this worker's to run (cancelled, or taken over after a missed heartbeat)."""
        def commit() -> bool:
            partial.flush()  # type: ignore[attr-defined]
            return self.store.update_job(job_id, only_if_state=("running",), only_if_owner=self.owner, done=done,
                                         heartbeat_at=time.time(), items_per_s=items_per_s)
        if not await asyncio.to_thread(commit):
            raise JobCancelled(job_id)

    def _finish(self, job: dict[str, Any], partial: np.ndarray, items: Items) -> None:
        folder = self.folder(job["id"])
        columns = {name: partial[:, i].astype(bool) if name == "is_anomaly" else np.array(partial[:, i])
                   for i, name in enumerate(COLUMNS)}
        staged = folder / (RESULT + ".tmp")
        write_csv(staged, BulkScores(columns, {"name": job["model"], "version": job["version"]}), items)
        os.replace(staged, folder / RESULT)
        if self.store.update_job(job["id"], only_if_state=("running",), only_if_owner=self.owner, state="succeeded",
                                 done=len(items), finished_at=time.time(), heartbeat_at=time.time()):
            (folder / PARTIAL).unlink(missing_ok=True)


def _open_partial(path: Path, n: int, done: int) -> tuple[np.ndarray, int]:
    """The (n, len(COLUMNS)) float64 rows scored so far and how many: reopened when resuming, else
    created (from item 0 again if the file of a resumed job is gone)."""
    if done and path.is_file():
        return np.lib.format.open_memmap(path, mode="r+"), done
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, len(COLUMNS))), 0


def _alive(pid: int, me: int) -> bool:
    """Whether a process with this id exists here (our own id, from a job of a previous process: not alive)."""
    if pid == me:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
