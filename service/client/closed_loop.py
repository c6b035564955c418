"""The client's calls for feedback, threshold recalibration and bulk jobs (docs/feedback-and-jobs.md);
VAEClient and AsyncVAEClient send them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from model.contract import DEFAULT_SCORE_VARIANT
from service.client.types import Call
from service.core.npy import npy_bytes

JOB_DONE = ("succeeded", "failed", "cancelled")


def _model(model: str | None) -> str:
    return "" if model is None else f"/models/{quote(model, safe='')}"


def _json(response: Any) -> Any:
    return response.json()


def feedback(labels: Iterable[tuple[str, str]], *, model: str | None) -> Call:
    """labels: (score_id, "anomaly" | "normal") pairs."""
    items = [{"score_id": score_id, "label": label} for score_id, label in labels]
    return Call("POST", _model(model) + "/feedback", json={"items": items}, parse=_json)


def feedback_summary(*, model: str | None) -> Call:
    return Call("GET", _model(model) + "/feedback/summary", parse=_json)


def recalibrate(goal: str, *, target: float | None, model: str, version: str | None, score: str,
                prevalence: float | None, dry_run: bool) -> Call:
    body = {"goal": goal, "target": target, "version": version, "score": score, "prevalence": prevalence,
            "dry_run": dry_run}
    return Call("POST", _model(model) + "/threshold/recalibrate", retry=False, parse=_json,
                json={k: v for k, v in body.items() if v is not None})


def revert_threshold(*, model: str, version: str | None, score: str = DEFAULT_SCORE_VARIANT) -> Call:
    body = {"version": version, "score": score}
    return Call("POST", _model(model) + "/threshold/revert", retry=False, parse=_json,
                json={k: v for k, v in body.items() if v is not None})


def submit_job(items: Any, *, path: str | None, model: str | None, version: str | None, options: dict[str, Any]
               ) -> Call:
    """An upload (a local file path, or an array sent as .npy), or `path`: a file in the service's input
    directory. Not retried: a retried upload would start a second job."""
    fields = {"model": model, "version": version, **options}
    fields = {k: v for k, v in fields.items() if v is not None}
    if path is not None:
        return Call("POST", "/jobs", json={"path": path, **fields}, retry=False, parse=_json)
    if isinstance(items, (str, Path)):
        source = Path(items)
        content, name = source.read_bytes(), source.name
    else:
        content, name = npy_bytes(np.asarray(items)), "items.npy"
    params = {k: str(v) for k, v in {**fields, "filename": name}.items()}
    return Call("POST", "/jobs", params=params, content=content, retry=False, parse=_json)


def job(job_id: str) -> Call:
    return Call("GET", f"/jobs/{quote(job_id, safe='')}", parse=_json)


def job_result(job_id: str) -> Call:
    return Call("GET", f"/jobs/{quote(job_id, safe='')}/result", parse=lambda response: response.content)


def cancel_job(job_id: str) -> Call:
    return Call("DELETE", f"/jobs/{quote(job_id, safe='')}", retry=False, parse=_json)
