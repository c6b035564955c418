"""Keeping the registry in step with its source: a repository scan (many models and versions, on
SIGHUP and POST /admin/reload) or one artifacts folder (a one-model repository, reloaded in place).

New versions load and warm before they take traffic; versions no longer available drain and go; a
broken new primary leaves the previous one serving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from model.manifest import ArtifactError
from service.core.batcher import QueueBudget
from service.core.discovery import ModelSource, scan_repository, single_folder
from service.core.handle import ModelHandle
from service.core.registry.entries import LOAD_ERRORS, ModelEntry, VersionSlot
from service.core.registry.loading import VersionLoader
from service.settings import Settings

log = logging.getLogger("vaeserve.registry")


class SyncedRegistry(Protocol):
    """What sync reads and replaces in the registry (service/core/registry/registry.py)."""

    settings: Settings
    loader: VersionLoader
    models: dict[str, ModelEntry]
    default: str | None
    problem: str | None
    started: bool

    def report_loaded(self) -> None: ...

    def listed_for_preload(self, name: str) -> bool: ...


class RepositorySync:
    """Scans and swaps; one at a time (a lock), the scan itself on the loader thread."""

    def __init__(self, registry: SyncedRegistry) -> None:
        self.registry = registry
        self.settings = registry.settings
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """The first scan (repository) or load (folder); failures are reported, never raised."""
        registry = self.registry
        try:
            if self.settings.model_repository is not None:
                await self.rescan()
            else:
                await self.load_folder(self.settings.artifacts_dir, initial=True)
        except LOAD_ERRORS as exc:
            registry.problem = str(exc)
            log.error("not ready: %s", exc)
        finally:
            registry.started = True
            registry.report_loaded()

    async def load_folder(self, folder: Path, *, initial: bool) -> ModelHandle:
        """One artifacts folder as the only model: load beside the old one, then swap (or raise)."""
        registry = self.registry
        async with self._lock:
            source = single_folder(Path(folder))
            entry = self._entry_for(source, previous=None)
            if initial:
                registry.models, registry.default = {source.name: entry}, source.name
            try:
                handle = await registry.loader.start(entry.slots[source.primary])
            except LOAD_ERRORS as exc:
                raise ArtifactError(str(exc)) from exc
            self._swap({source.name: entry})
            return handle

    async def rescan(self) -> None:
        """Read the repository again and swap in what it holds now."""
        registry, root = self.registry, self.settings.model_repository
        assert root is not None, "rescan needs a model repository"
        async with self._lock:
            sources = await registry.loader.run_blocking(scan_repository, root)
            entries = {name: self._entry_for(source, previous=registry.models.get(name))
                       for name, source in sources.items()}
            wanted = [slot for name, entry in entries.items() if not entry.source.problem and self._preloads(name)
                      for slot in entry.slots.values() if slot.handle is None and not slot.error]
            limit = self.settings.max_loaded_models or len(wanted)
            # More preloads than may stay loaded would only evict each other: the first `limit` load.
            serving = {name for name, entry in registry.models.items()
                       if any(s.handle is not None for s in entry.slots.values())}
            await asyncio.gather(*(registry.loader.start(slot, replacing=slot.model in serving)
                                   for slot in wanted[:limit]), return_exceptions=True)
            for name, entry in entries.items():
                _keep_previous_primary_if_broken(entry, registry.models.get(name))
            self._swap(entries)
            registry.problem = None

    def _preloads(self, name: str) -> bool:
        previous = self.registry.models.get(name)
        if previous is not None:  # keep what was warm warm: a model in use gets its new version loaded
            return any(s.handle is not None for s in previous.slots.values())
        return self.registry.listed_for_preload(name)

    def _entry_for(self, source: ModelSource, *, previous: ModelEntry | None) -> ModelEntry:
        """An entry for a scanned model, reusing the previous slots whose files did not change. A
        version that failed to load gets a fresh slot, so a rescan tries it again: an operator fixes a
        corrupted graph (the manifest, and so the fingerprint, unchanged) and sends SIGHUP."""
        old = previous.slots if previous is not None else {}
        budget = previous.budget if previous is not None else QueueBudget(self.settings.max_queue_items)
        slots: dict[str, VersionSlot] = {}
        for version in source.available:
            kept = old.get(version)
            failed = kept is not None and kept.error is not None and kept.loading is None
            same = (kept is not None and not failed and kept.source == source.versions[version]
                    and self.settings.model_repository)
            slots[version] = kept if same and kept is not None else VersionSlot(
                source.name, version, source.versions[version], budget)
        return ModelEntry(source, budget, slots, source.primary,
                          unloaded_by_admin=previous.unloaded_by_admin if previous is not None else False)

    def _swap(self, entries: dict[str, ModelEntry]) -> None:
        registry = self.registry
        kept = {id(s) for e in entries.values() for s in e.slots.values()}
        gone = [s for e in registry.models.values() for s in e.slots.values() if id(s) not in kept]
        registry.models = entries
        names = sorted(entries)
        registry.default = self.settings.default_model or (names[0] if len(names) == 1 else None)
        for slot in gone:
            registry.loader.retire(slot, reason="removed")
        registry.report_loaded()


def _keep_previous_primary_if_broken(entry: ModelEntry, previous: ModelEntry | None) -> None:
    slot = entry.slots.get(entry.primary)
    if previous is None or slot is None or not slot.error:
        return
    old = previous.slots.get(previous.primary)
    if old is not None and old.handle is not None and old.version in entry.source.versions:
        log.error("model %s: new version %s failed (%s); version %s keeps serving", entry.source.name,
                  entry.primary, slot.error, old.version)
        entry.slots[old.version] = old
        entry.primary = old.version
