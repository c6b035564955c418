"""Request bodies: read within limits of size and time, parsed as JSON or .npy, options validated,
and long work cancelled when its client goes away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from service.core.errors import (
    BodyReadTimeout,
    BodyTooLarge,
    ClientDisconnected,
    InvalidInput,
    MalformedBody,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from service.core.npy import load_npy
from service.http import json_body
from service.settings import Settings

log = logging.getLogger("vaeserve.body")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

NPY = "application/x-npy"


def media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


# A too-large body is read and dropped up to this many times the limit before the connection closes,
# so a client that sends it anyway reads the 413 (past that it gets a reset, which costs us nothing).
LINGER_BODY_FACTOR = 4


async def read_body(request: Request, settings: Settings) -> bytes:
    """The raw body: 413 as soon as Content-Length or the bytes read pass max_body_bytes, 408 if it has
    not all come within body_read_timeout_s, ClientDisconnected (not an error of ours) if the client
    goes away meanwhile."""
    limit, timeout_s = settings.max_body_bytes, settings.body_read_timeout_s
    linger_bytes = LINGER_BODY_FACTOR * limit
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit}", linger_s=timeout_s,
                           linger_bytes=linger_bytes if int(declared) <= linger_bytes else 0)
    chunks, size = [], 0
    # A bare timer rather than asyncio.timeout(): the context manager's bookkeeping was 8% of a
    # single-item request, whose body has almost always arrived with its headers.
    task = asyncio.current_task()
    assert task is not None, "must run inside a task"
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                log.debug("client disconnected after sending %d body bytes", size)
                raise ClientDisconnected(f"client disconnected after sending {size} body bytes")
            chunk, more = message.get("body", b""), message.get("more_body", False)
            size += len(chunk)
            if size > limit:
                if more:  # it is still sending: answer, drop the rest, close
                    raise BodyTooLarge(f"body exceeds the limit of {limit} bytes", linger_s=timeout_s,
                                       linger_bytes=linger_bytes)
                raise PayloadTooLarge(f"body of {size} bytes exceeds the limit of {limit}")
            chunks.append(chunk)
            if not more:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:  # our timer, not a cancellation from outside
            raise BodyReadTimeout(f"the body did not arrive within body_read_timeout_s ({timeout_s}s); "
                                  f"{size} bytes came") from None
        raise
    finally:
        timer.cancel()


async def read_request(request: Request, settings: Settings) -> dict[str, Any]:
    """The request's fields: a JSON object, or (application/x-npy) `inputs` from an .npy body with
    the options as query parameters. 415 / 413 / 400 / 422 for the ways it can be wrong."""
    content_type = media_type(request.headers.get("content-type"))
    if content_type == NPY:
        fields: dict[str, Any] = {k: _query_value(v) for k, v in request.query_params.items()}
        fields["inputs"] = parse_npy(await read_body(request, settings), max_items=settings.max_items_per_request)
        return fields
    if content_type and not content_type.endswith("json"):
        raise UnsupportedMediaType(f"content-type must be application/json or {NPY}, got {content_type!r}")
    body = await read_body(request, settings)
    try:
        data = json_body.loads(body)  # `inputs` as an array when it is plain rows of numbers
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"body must be a JSON object, got {type(data).__name__}")
    return data


def _query_value(text: str) -> Any:
    """Query parameters as JSON values (16 -> int, true -> bool), else the plain string."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def parse_npy(body: bytes, *, max_items: int) -> np.ndarray:
    """The `inputs` of an .npy body, its header checked before anything is allocated (no pickles)."""
    return load_npy(body, field="inputs", max_items=max_items)


def wants_npy(request: Request) -> bool:
    return NPY in request.headers.get("accept", "")


def validate_options(model: type[M], data: dict[str, Any]) -> M:
    """Validate the small option fields; the message names each bad field and why."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors())
        raise InvalidInput(problems) from None


# Watching for a disconnect takes a task per request (8% of the server's time for a single-item
# request, py-spy); small work costs less than the watch, so it is simply done.
WATCH_DISCONNECT_MIN_WORK = 1024  # items (times Monte Carlo samples for scores)


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T], *, size: int) -> T:
    """Await work, but when it is big (size >= WATCH_DISCONNECT_MIN_WORK) cancel it if the client
    disconnects, so its queued items are not computed."""
    if size < WATCH_DISCONNECT_MIN_WORK:
        return await work
    task = asyncio.current_task()
    assert task is not None, "must run inside a task"

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnected("client disconnected; its queued items were dropped") from None
        raise
    finally:
        watcher.cancel()
