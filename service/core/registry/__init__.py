"""The model registry, split by job: entries (what is known of each model and version), loading
(load, warm, evict, drain; the thread pools), sync (the repository or folder), registry (routing a
request to a loaded version, and the admin operations)."""

from service.core.registry.entries import LOAD_ERRORS, Lease, ModelEntry, VersionSlot
from service.core.registry.registry import ModelRegistry

__all__ = ["LOAD_ERRORS", "Lease", "ModelEntry", "ModelRegistry", "VersionSlot"]
