"""The traffic policy (policy.json), the repository scan and the per-model queue budget: pure units."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import numpy as np
import pytest

from model.repository import latest, next_version, version_dir
from service.core.batcher import DynamicBatcher, QueueBudget
from service.core.discovery import scan_repository
from service.core.errors import Overloaded
from service.core.policy import PolicyError, TrafficPolicy


def test_latest_orders_integer_versions_numerically_after_names() -> None:
    assert latest(["9", "10", "2"]) == "10"
    assert latest(["candidate", "3"]) == "3" and latest(["a", "b"]) == "b"


def test_serve_latest_all_and_a_list_choose_the_primary_and_what_is_available() -> None:
    present = {"1", "2", "10"}
    assert TrafficPolicy().resolve(present) == ("10", ["10"])
    assert TrafficPolicy.from_dict({"serve": "all"}).resolve(present) == ("10", ["1", "2", "10"])
    assert TrafficPolicy.from_dict({"serve": ["1", "2"]}).resolve(present) == ("2", ["1", "2"])
    canary = TrafficPolicy.from_dict({"serve": ["2"], "canary": {"10": 0.2}, "shadow": {"version": "1", "fraction": 0.5}})
    assert canary.resolve(present) == ("2", ["1", "2", "10"])


@pytest.mark.parametrize("bad, message", [
    ({"serve": []}, "serve"), ({"serve": "newest"}, "serve"), ({"canary": {"2": 1.5}}, "canary"),
    ({"canary": {"2": 0.6, "3": 0.6}}, "sum to 1.2"), ({"shadow": {"version": 2, "fraction": 0.1}}, "shadow"),
    ({"shadow": {"version": "2", "fraction": 2}}, "shadow"), ({"weights": {}}, "keys among"), ([], "object"),
])
def test_impossible_policies_are_refused_with_the_field(bad: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        TrafficPolicy.from_dict(bad)


def test_versions_named_by_a_policy_must_be_present() -> None:
    with pytest.raises(PolicyError, match="not present"):
        TrafficPolicy.from_dict({"canary": {"7": 0.1}}).resolve({"1", "2"})
    with pytest.raises(PolicyError, match="none of"):
        TrafficPolicy.from_dict({"serve": ["7"]}).resolve({"1"})


def test_canary_routing_follows_the_weights() -> None:
    policy, rng = TrafficPolicy.from_dict({"canary": {"1": 0.1, "3": 0.3}}), random.Random(0)
    draws = [policy.route("2", rng) for _ in range(20000)]
    assert abs(draws.count("1") / 20000 - 0.1) < 0.01 and abs(draws.count("3") / 20000 - 0.3) < 0.015
    assert {TrafficPolicy().route("2", rng) for _ in range(100)} == {"2"}


def test_scan_reads_versions_policies_and_reports_a_bad_policy(tmp_path: Path) -> None:
    for name, version in (("a", "1"), ("a", "2"), ("b", "1"), ("not a name", "1")):
        (tmp_path / name / version).mkdir(parents=True)
    (tmp_path / "a" / "policy.json").write_text(json.dumps({"serve": "all"}))
    (tmp_path / "b" / "policy.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    models = scan_repository(tmp_path)
    assert sorted(models) == ["a", "b", "empty"]
    assert models["a"].primary == "2" and models["a"].available == ["1", "2"] and models["a"].problem is None
    assert "not valid JSON" in (models["b"].problem or "")
    assert models["empty"].problem == "no version folders"


def test_export_layout_numbers_versions_and_refuses_odd_names(tmp_path: Path) -> None:
    assert next_version(tmp_path, "m") == "1"
    version_dir(tmp_path, "m", "1").mkdir(parents=True)
    version_dir(tmp_path, "m", "7").mkdir(parents=True)
    assert next_version(tmp_path, "m") == "8"
    with pytest.raises(ValueError, match="model name"):
        version_dir(tmp_path, "a.b", "1")
    with pytest.raises(ValueError, match="version"):
        version_dir(tmp_path, "a", "../x")


def test_a_shared_budget_refuses_one_model_while_another_model_is_admitted() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        def slow(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return batch

        hot_budget = QueueBudget(4)
        hot = [DynamicBatcher(slow, max_batch_size=1, batch_wait_timeout_s=1000, max_queue_items=4, budget=hot_budget)
               for _ in range(2)]  # two graphs of one model
        cold = DynamicBatcher(slow, max_batch_size=1, batch_wait_timeout_s=1000, max_queue_items=4)
        # Not started: nothing drains, so queued items stay queued while we probe admission.
        for b in (*hot, cold):
            b._task = asyncio.get_running_loop().create_task(release.wait())  # noqa: SLF001 - a loop that never runs
        pending = [asyncio.ensure_future(hot[i % 2].submit({"x": np.zeros((1, 1))})) for i in range(4)]
        await asyncio.sleep(0)
        assert hot_budget.items == 4
        with pytest.raises(Overloaded):
            await hot[1].submit({"x": np.zeros((1, 1))})
        admitted = asyncio.ensure_future(cold.submit({"x": np.zeros((1, 1))}))
        await asyncio.sleep(0)
        assert cold.budget.items == 1 and not admitted.done()
        for task in (*pending, admitted):
            task.cancel()
        release.set()

    asyncio.run(scenario())
