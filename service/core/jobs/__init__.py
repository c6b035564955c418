"""Bulk scoring jobs inside the service (docs/feedback-and-jobs.md): inputs.py checks what a job
scores, board.py accepts and reports jobs, runner.py runs them through the model's batchers."""

from __future__ import annotations

from service.core.jobs.board import JobBoard
from service.core.jobs.inputs import format_of, under_input_dir
from service.core.jobs.runner import JobRunner

__all__ = ["JobBoard", "JobRunner", "format_of", "under_input_dir"]
