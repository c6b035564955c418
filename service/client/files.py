"""The items of a bulk-scoring job (service/core/itemfiles.py, shared with the service's jobs)."""

from __future__ import annotations

from service.core.itemfiles import Items, read_items

__all__ = ["Items", "read_items"]
