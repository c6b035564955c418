"""The service's store: feedback, threshold policies and jobs (base.py: the interface; sqlite.py: the default)."""

from __future__ import annotations

from pathlib import Path

from service.core.store.base import ACTIVE_JOB_STATES, JOB_STATES, FeedbackRow, Label, Outcome, Store, ThresholdRow
from service.core.store.sqlite import SQLiteStore

STORE_FILE = "vaeserve.sqlite3"


def open_store(data_dir: Path) -> Store:
    """The store under data_dir (created on first use)."""
    return SQLiteStore(data_dir / STORE_FILE)


__all__ = ["ACTIVE_JOB_STATES", "JOB_STATES", "FeedbackRow", "Label", "Outcome", "SQLiteStore", "Store",
           "ThresholdRow", "open_store"]
