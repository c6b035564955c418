"""What the service keeps between requests and restarts: feedback labels, threshold policies, bulk
jobs. A Protocol, so a Postgres store can replace the SQLite one (service/core/store/sqlite.py)
without touching its callers; every method is blocking, and async callers run it off the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Label = Literal["anomaly", "normal"]
Outcome = Literal["created", "updated", "unchanged"]
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_JOB_STATES = ("queued", "running")


@dataclass(frozen=True)
class FeedbackRow:
    """One labelled score: what scored it, the score, the threshold it was flagged against, the label."""

    id: str  # "sid:<nonce>" for a quoted score_id, "item:<sha256>" for an item sent with its label
    model: str
    version: str
    variant: str
    score: float
    threshold: float | None  # None: flagged by Benjamini-Hochberg (fdr), not a threshold
    flagged: bool
    label: Label
    source: Literal["score_id", "item"]
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class ThresholdRow:
    """One revision of a version's threshold policy for a score variant."""

    revision: int
    model: str
    version: str
    variant: str
    threshold: float
    quantile: float  # the threshold's share of the normal calibration scores below it
    goal: dict[str, Any]  # what chose it: goal, target, labels used, estimates
    created_at: float
    active: bool
    replaced: int | None  # the revision it replaced when written (None: the manifest's threshold)


class Store(Protocol):
    """Feedback, thresholds and jobs, shared by every worker process of the service."""

    def close(self) -> None: ...

    def secret(self, key: str, make: bytes) -> bytes:
        """The value kept under `key`, storing `make` first when there is none (first writer wins)."""

    def put_feedback(self, rows: list[FeedbackRow]) -> list[Outcome]:
        """Insert or merge each row (docs/feedback-and-jobs.md: the newer label wins), in one transaction."""

    def feedback(self, model: str) -> list[FeedbackRow]: ...

    def add_threshold(self, row: ThresholdRow) -> ThresholdRow:
        """Write a new active revision, deactivating the active one it replaces."""

    def revert_threshold(self, model: str, version: str, variant: str) -> tuple[ThresholdRow, ThresholdRow | None]:
        """Deactivate the active revision and reactivate the one it replaced: (reverted, now active or None)."""

    def thresholds(self, model: str | None = None, *, active_only: bool = False) -> list[ThresholdRow]: ...

    def add_job(self, job: dict[str, Any]) -> None: ...

    def job(self, job_id: str) -> dict[str, Any] | None: ...

    def jobs(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]: ...

    def update_job(self, job_id: str, *, only_if_state: tuple[str, ...] | None = None, only_if_owner: str | None = None,
                   **fields: Any) -> bool:
        """Set fields, only while the job is in one of only_if_state and owned by only_if_owner (when
        given). True if it changed."""

    def claim_job(self, job_id: str, *, owner: str, expected_owner: str | None, now: float) -> bool:
        """Atomically make `owner` run the job, if it is still queued or still owned by expected_owner."""

    def delete_job(self, job_id: str) -> None: ...
