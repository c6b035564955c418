"""What the registry knows of each model and version, and a request's hold on a loaded version.

Three nouns, one each: a `ModelEntry` is a model (its versions and traffic policy); a `VersionSlot`
is one version (its files, and its `ModelHandle` while loaded); a `Lease` is one request's hold on
a handle, so the version is not unloaded under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from model.manifest import ArtifactError
from service.core.batcher import QueueBudget
from service.core.discovery import ModelSource, VersionSource
from service.core.handle import ModelHandle
from service.core.policy import TrafficPolicy

LOAD_ERRORS = (ArtifactError, OSError, ValueError, KeyError, TypeError)


@dataclass(eq=False)
class VersionSlot:
    """One version of one model: its files, and its handle while loaded."""

    model: str
    version: str
    source: VersionSource
    budget: QueueBudget  # the model's, shared by its versions
    handle: ModelHandle | None = None
    loading: asyncio.Task[ModelHandle] | None = None
    error: str | None = None
    last_used: float = 0.0
    memory_bytes: int | None = None  # measured at its last load (kept after an unload: the next load's estimate)

    @property
    def state(self) -> str:
        return "ready" if self.handle else "loading" if self.loading else "failed" if self.error else "unloaded"


@dataclass(eq=False)
class ModelEntry:
    source: ModelSource
    budget: QueueBudget
    slots: dict[str, VersionSlot]  # the available versions (policy.resolve)
    primary: str
    unloaded_by_admin: bool = False
    counters: dict[str, Any] = field(default_factory=dict)  # version -> requests counter child

    @property
    def policy(self) -> TrafficPolicy:
        return self.source.policy


class Lease:
    """One request's hold on a handle: counted in active_requests from acquire to exit, so a version
    is not unloaded under it. (A class: @asynccontextmanager cost 6% of a single-item request.)"""

    __slots__ = ("acquire", "model", "version", "handle")

    def __init__(self, acquire: Callable[[str | None, str | None], Awaitable[ModelHandle]], model: str | None,
                 version: str | None) -> None:
        self.acquire, self.model, self.version = acquire, model, version

    async def __aenter__(self) -> ModelHandle:
        self.handle = await self.acquire(self.model, self.version)
        self.handle.active_requests += 1
        return self.handle

    async def __aexit__(self, *exc_info: object) -> None:
        self.handle.active_requests -= 1
