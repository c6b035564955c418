"""The default store: one SQLite file under data_dir, in WAL mode, shared by every worker process.

WAL lets readers go on while one process writes; busy_timeout makes a writer that finds the file
locked by another worker wait for it instead of failing; writes that read first (merge a label,
claim a job) run in BEGIN IMMEDIATE transactions, so two workers never both decide on the same row.
One connection per process, used by one thread at a time (a lock): callers run it off the loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.core.store.base import FeedbackRow, Outcome, ThresholdRow

BUSY_TIMEOUT_MS = 10_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL, score REAL NOT NULL,
    threshold REAL, flagged INTEGER NOT NULL, label TEXT NOT NULL, source TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS feedback_by_model ON feedback (model, version);
CREATE TABLE IF NOT EXISTS thresholds (
    revision INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    threshold REAL NOT NULL, quantile REAL NOT NULL, goal TEXT NOT NULL, created_at REAL NOT NULL,
    active INTEGER NOT NULL, replaced INTEGER);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at REAL NOT NULL, data TEXT NOT NULL);
"""
JOB_COLUMNS = ("id", "state", "created_at")  # the rest of a job lives in its `data` JSON


class SQLiteStore:
    """service.core.store.base.Store on one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at each checkpoint, never corrupt
        with self._write() as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A BEGIN IMMEDIATE transaction: the write lock is taken before anything is read."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---- secrets -----------------------------------------------------------------------------
    def secret(self, key: str, make: bytes) -> bytes:
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, make))
            return bytes(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # ---- feedback ----------------------------------------------------------------------------
    def put_feedback(self, rows: list[FeedbackRow]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        now = time.time()
        with self._write() as db:
            for row in rows:
                found = db.execute("SELECT label FROM feedback WHERE id = ?", (row.id,)).fetchone()
                if found is None:
                    db.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (row.id, row.model, row.version, row.variant, row.score, row.threshold,
                                int(row.flagged), row.label, row.source, now, now))
                    outcomes.append("created")
                elif found[0] == row.label:
                    outcomes.append("unchanged")
                else:  # a correction: the newer label replaces the older one
                    db.execute("UPDATE feedback SET label = ?, updated_at = ? WHERE id = ?", (row.label, now, row.id))
                    outcomes.append("updated")
        return outcomes

    def feedback(self, model: str) -> list[FeedbackRow]:
        rows = self._read("SELECT id, model, version, variant, score, threshold, flagged, label, source, created_at, "
                          "updated_at FROM feedback WHERE model = ? ORDER BY created_at, id", (model,))
        return [FeedbackRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], r[10]) for r in rows]

    # ---- thresholds --------------------------------------------------------------------------
    def add_threshold(self, row: ThresholdRow) -> ThresholdRow:
        with self._write() as db:
            key = (row.model, row.version, row.variant)
            found = db.execute("SELECT revision FROM thresholds WHERE model = ? AND version = ? AND variant = ? "
                               "AND active = 1", key).fetchone()
            replaced = found[0] if found else None
            db.execute("UPDATE thresholds SET active = 0 WHERE revision = ?", (replaced,))
            cursor = db.execute(
                "INSERT INTO thresholds (model, version, variant, threshold, quantile, goal, created_at, active, "
                "replaced) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (*key, row.threshold, row.quantile, json.dumps(row.goal), row.created_at, replaced))
            revision = cursor.lastrowid
        assert revision is not None, "an insert has a row id"
        return ThresholdRow(revision, *key, row.threshold, row.quantile, row.goal, row.created_at, True, replaced)

    def revert_threshold(self, model: str, version: str, variant: str) -> tuple[ThresholdRow, ThresholdRow | None]:
        with self._write() as db:
            found = db.execute("SELECT revision, replaced FROM thresholds WHERE model = ? AND version = ? AND "
                               "variant = ? AND active = 1", (model, version, variant)).fetchone()
            if found is None:
                raise LookupError(f"model {model!r} version {version!r} serves its manifest's {variant} threshold; "
                                  "there is no recalibration to revert")
            db.execute("UPDATE thresholds SET active = 0 WHERE revision = ?", (found[0],))
            if found[1] is not None:
                db.execute("UPDATE thresholds SET active = 1 WHERE revision = ?", (found[1],))
        by_revision = {r.revision: r for r in self.thresholds(model)}
        return by_revision[found[0]], by_revision.get(found[1]) if found[1] is not None else None

    def thresholds(self, model: str | None = None, *, active_only: bool = False) -> list[ThresholdRow]:
        where = [w for w, on in (("model = ?", model is not None), ("active = 1", active_only)) if on]
        sql = ("SELECT revision, model, version, variant, threshold, quantile, goal, created_at, active, replaced "
               "FROM thresholds" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY revision")
        rows = self._read(sql, (model,) if model is not None else ())
        return [ThresholdRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7], bool(r[8]), r[9])
                for r in rows]

    # ---- jobs --------------------------------------------------------------------------------
    def add_job(self, job: dict[str, Any]) -> None:
        with self._write() as db:
            db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)", (job["id"], job["state"], job["created_at"],
                                                                 json.dumps(_data(job))))

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT id, state, created_at, data FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        if states is None:
            rows = self._read("SELECT id, state, created_at, data FROM jobs ORDER BY created_at")
        else:
            marks = ",".join("?" * len(states))
            rows = self._read(f"SELECT id, state, created_at, data FROM jobs WHERE state IN ({marks}) "
                              "ORDER BY created_at", states)
        return [_job(r) for r in rows]

    def update_job(self, job_id: str, *, only_if_state: tuple[str, ...] | None = None, only_if_owner: str | None = None,
                   **fields: Any) -> bool:
        with self._write() as db:
            found = db.execute("SELECT id, state, created_at, data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if found is None or (only_if_state is not None and found[1] not in only_if_state):
                return False
            job = _job(found)
            if only_if_owner is not None and job.get("owner") != only_if_owner:
                return False
            job.update(fields)
            db.execute("UPDATE jobs SET state = ?, data = ? WHERE id = ?", (job["state"], json.dumps(_data(job)),
                                                                            job_id))
            return True

    def claim_job(self, job_id: str, *, owner: str, expected_owner: str | None, now: float) -> bool:
        with self._write() as db:
            found = db.execute("SELECT id, state, created_at, data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if found is None:
                return False
            job = _job(found)
            if not (job["state"] == "queued" or (job["state"] == "running" and job.get("owner") == expected_owner)):
                return False
            job.update(state="running", owner=owner, heartbeat_at=now, attempts=job.get("attempts", 0) + 1)
            job.setdefault("started_at", now)
            db.execute("UPDATE jobs SET state = ?, data = ? WHERE id = ?", ("running", json.dumps(_data(job)), job_id))
            return True

    def delete_job(self, job_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


def _data(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in JOB_COLUMNS}


def _job(row: tuple[Any, ...]) -> dict[str, Any]:
    return {"id": row[0], "state": row[1], "created_at": row[2], **json.loads(row[3])}
