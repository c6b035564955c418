"""VAESERVE_MAX_LOADED_BYTES: the loader unloads least-recently-used idle versions to fit a new one,
never a version with requests in flight (service/core/registry/loading.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.core.batcher import QueueBudget
from service.core.discovery import VersionSource
from service.core.drift import DriftMonitor
from service.core.errors import ModelNotReady
from service.core.metrics import Metrics
from service.core.registry import VersionSlot
from service.core.registry.loading import VersionLoader
from service.settings import Settings

MIB = 2**20


def loaded_slot(name: str, *, mib: int, last_used: float, in_flight: int = 0) -> VersionSlot:
    """A loaded version with a measured size (a stand-in handle: the loader reads only these fields)."""
    slot = VersionSlot(name, "1", VersionSource(Path(name), name), QueueBudget(8), last_used=last_used,
                       memory_bytes=mib * MIB)
    slot.handle = SimpleNamespace(name=name, version="1", ref={"name": name, "version": "1"}, batchers={},  # type: ignore[assignment]
                                  active_requests=in_flight, runtime=SimpleNamespace(graphs={}, weights=None))
    return slot


def room_for(new_mib: int, slots: list[VersionSlot], tmp_path: Path, **limits: int) -> tuple[bool, set[str]]:
    """Ask the loader to make room for a new version; (room made?, the names still loaded)."""
    settings = Settings(model_repository=tmp_path, **limits)
    loader = VersionLoader(settings, Metrics(), DriftMonitor(settings), on_change=lambda: None)
    new = VersionSlot("new", "1", VersionSource(Path("new"), "new"), QueueBudget(8), memory_bytes=new_mib * MIB)

    async def ask() -> bool:
        loader.loaded.update(slots)
        made = loader._make_room(keep=new)  # noqa: SLF001
        await asyncio.sleep(0)  # the unloaded ones drain
        return made

    made = asyncio.run(ask())
    return made, {s.model for s in loader.loaded}


def test_the_least_recently_used_idle_versions_go_until_the_new_one_fits(tmp_path: Path) -> None:
    slots = [loaded_slot("a", mib=10, last_used=3.0), loaded_slot("b", mib=10, last_used=1.0),
             loaded_slot("c", mib=10, last_used=2.0)]
    made, kept = room_for(15, slots, tmp_path, max_loaded_bytes=40 * MIB)
    assert made and kept == {"a", "c"}  # 30 + 15 > 40: b, the least recently used, goes; 20 + 15 fits
    assert slots[1].handle is None and slots[1].memory_bytes == 10 * MIB  # its size stays: the next load's estimate


def test_a_version_with_requests_in_flight_is_never_unloaded(tmp_path: Path) -> None:
    slots = [loaded_slot("a", mib=10, last_used=3.0), loaded_slot("b", mib=10, last_used=1.0, in_flight=2),
             loaded_slot("c", mib=10, last_used=2.0)]
    made, kept = room_for(25, slots, tmp_path, max_loaded_bytes=40 * MIB)
    assert made and kept == {"b"}  # b is the oldest but busy: c, then a, go instead
    assert slots[1].handle is not None


@pytest.mark.parametrize("limits", [{"max_loaded_bytes": 25 * MIB}, {"max_loaded_models": 2}], ids=["bytes", "count"])
def test_when_only_busy_versions_could_go_the_load_waits_with_503(tmp_path: Path, limits: dict[str, int]) -> None:
    slots = [loaded_slot("a", mib=10, last_used=1.0, in_flight=1), loaded_slot("b", mib=10, last_used=2.0,
                                                                                in_flight=1)]
    made, kept = room_for(10, slots, tmp_path, **limits)
    assert not made and kept == {"a", "b"}
    settings = Settings(model_repository=tmp_path, **limits)
    loader = VersionLoader(settings, Metrics(), DriftMonitor(settings), on_change=lambda: None)
    loader.loaded.update(slots)
    new = VersionSlot("new", "1", VersionSource(Path("new"), "new"), QueueBudget(8))

    async def start() -> None:
        loader.start(new)

    with pytest.raises(ModelNotReady, match="busy or loading") as refused:
        asyncio.run(start())
    assert "Retry-After" in refused.value.headers and new.loading is None


def test_a_version_never_measured_is_expected_to_weigh_the_mean_of_the_others(tmp_path: Path) -> None:
    slots = [loaded_slot("a", mib=10, last_used=2.0), loaded_slot("b", mib=30, last_used=1.0)]
    settings = Settings(model_repository=tmp_path, max_loaded_bytes=50 * MIB)
    loader = VersionLoader(settings, Metrics(), DriftMonitor(settings), on_change=lambda: None)
    loader.loaded.update(slots)
    new = VersionSlot("new", "1", VersionSource(Path("new"), "new"), QueueBudget(8))
    assert loader._expected_bytes(new) == 20 * MIB  # noqa: SLF001
    assert loader.loaded_bytes() == 40 * MIB
