"""The dynamic batcher, deterministically: size and deadline flushes, order, splitting, errors,
backpressure, timeouts and cancelled callers."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.core.batcher import BatchStats, DynamicBatcher
from service.core.errors import ModelNotReady, Overloaded, PayloadTooLarge, RequestTimeout


def doubling(calls: list[int]):  # type: ignore[no-untyped-def]
    def handler(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(batch["x"]))
        return {"y": batch["x"] * 2}
    return handler


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_only_a_full_batch_flushes_when_the_wait_is_huge() -> None:
    async def scenario() -> None:
        calls: list[int] = []
        batcher = DynamicBatcher(doubling(calls), max_batch_size=4, batch_wait_timeout_s=1000, max_queue_items=100)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit({"x": np.array([float(i)])})) for i in range(3)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks), "nothing may finish before the batch is full"
        tasks.append(asyncio.create_task(batcher.submit({"x": np.array([3.0])})))
        results = await asyncio.gather(*tasks)
        assert calls == [4]
        assert [r["y"][0] for r in results] == [0.0, 2.0, 4.0, 6.0]
        await batcher.drain_and_stop(1)
    run(scenario())


def test_a_partial_batch_flushes_after_the_wait_timeout() -> None:
    async def scenario() -> None:
        calls: list[int] = []
        batcher = DynamicBatcher(doubling(calls), max_batch_size=64, batch_wait_timeout_s=0.05, max_queue_items=100)
        batcher.start()
        start = time.monotonic()
        await asyncio.gather(*(batcher.submit({"x": np.array([1.0])}) for _ in range(3)))
        assert calls == [3]
        assert time.monotonic() - start >= 0.045
        await batcher.drain_and_stop(1)
    run(scenario())


def test_a_large_request_is_split_across_batches_and_reassembled_in_order() -> None:
    async def scenario() -> None:
        calls: list[int] = []
        batcher = DynamicBatcher(doubling(calls), max_batch_size=4, batch_wait_timeout_s=0, max_queue_items=100)
        batcher.start()
        x = np.arange(10, dtype=np.float64)
        out = await batcher.submit({"x": x})
        np.testing.assert_array_equal(out["y"], x * 2)
        assert calls == [4, 4, 2]
        await batcher.drain_and_stop(1)
    run(scenario())


def test_items_with_different_per_item_shapes_never_share_a_batch() -> None:
    async def scenario() -> None:
        shapes: list[tuple[int, ...]] = []

        def handler(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            shapes.append(batch["eps"].shape)
            return {"y": batch["eps"].sum(axis=(1, 2))}
        batcher = DynamicBatcher(handler, max_batch_size=8, batch_wait_timeout_s=0.05, max_queue_items=100)
        batcher.start()
        await asyncio.gather(batcher.submit({"eps": np.ones((1, 2, 3))}), batcher.submit({"eps": np.ones((1, 5, 3))}),
                             batcher.submit({"eps": np.ones((1, 2, 3))}))
        assert shapes == [(1, 2, 3), (1, 5, 3), (1, 2, 3)], "arrival order is kept; K=5 runs alone"
        await batcher.drain_and_stop(1)
    run(scenario())


def test_every_request_of_a_failed_batch_gets_the_exception() -> None:
    async def scenario() -> None:
        def failing(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise RuntimeError("engine failed")
        batcher = DynamicBatcher(failing, max_batch_size=8, batch_wait_timeout_s=0.02, max_queue_items=100)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit({"x": np.ones(1)}) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "engine failed" in str(r) for r in results)
        await batcher.drain_and_stop(1)
    run(scenario())


def test_a_handler_returning_the_wrong_number_of_rows_is_an_error() -> None:
    async def scenario() -> None:
        batcher = DynamicBatcher(lambda b: {"y": np.ones(1)}, max_batch_size=8, batch_wait_timeout_s=0.02,
                                 max_queue_items=100)
        batcher.start()
        with pytest.raises(RuntimeError, match="1 rows"):
            await batcher.submit({"x": np.ones(3)})
        await batcher.drain_and_stop(1)
    run(scenario())


def test_a_full_queue_refuses_at_once_with_a_retry_after() -> None:
    async def scenario() -> None:
        release = threading.Event()

        def slow(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            release.wait(5)
            return {"y": batch["x"]}
        batcher = DynamicBatcher(slow, max_batch_size=2, batch_wait_timeout_s=0, max_queue_items=4)
        batcher.start()
        running = asyncio.create_task(batcher.submit({"x": np.ones(2)}))
        await asyncio.sleep(0.05)  # the first batch is now running; the queue is empty
        queued = asyncio.create_task(batcher.submit({"x": np.ones(4)}))
        await asyncio.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit({"x": np.ones(1)})
        assert time.monotonic() - start < 0.05
        assert int(refused.value.headers["Retry-After"]) >= 1
        release.set()
        await asyncio.gather(running, queued)  # nothing accepted is lost
        await batcher.drain_and_stop(1)
    run(scenario())


def test_a_request_past_its_deadline_in_the_queue_times_out() -> None:
    async def scenario() -> None:
        def slow(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            time.sleep(0.2)
            return {"y": batch["x"]}
        batcher = DynamicBatcher(slow, max_batch_size=1, batch_wait_timeout_s=0, max_queue_items=10, request_timeout_s=0.1)
        batcher.start()
        first = asyncio.create_task(batcher.submit({"x": np.ones(1)}))
        await asyncio.sleep(0.01)
        with pytest.raises(RequestTimeout):
            await batcher.submit({"x": np.ones(1)})
        await first
        await batcher.drain_and_stop(1)
    run(scenario())


def test_items_of_a_caller_that_went_away_are_not_computed() -> None:
    async def scenario() -> None:
        seen: list[float] = []
        gate = threading.Event()

        def handler(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            gate.wait(5)
            seen.extend(batch["x"].tolist())
            return {"y": batch["x"]}
        batcher = DynamicBatcher(handler, max_batch_size=1, batch_wait_timeout_s=0, max_queue_items=10)
        batcher.start()
        first = asyncio.create_task(batcher.submit({"x": np.array([1.0])}))
        await asyncio.sleep(0.02)
        abandoned = asyncio.create_task(batcher.submit({"x": np.array([2.0])}))
        await asyncio.sleep(0.02)
        abandoned.cancel()
        gate.set()
        await first
        await batcher.submit({"x": np.array([3.0])})
        assert seen == [1.0, 3.0]
        await batcher.drain_and_stop(1)
    run(scenario())


def test_drain_answers_everything_accepted_then_refuses_new_work() -> None:
    async def scenario() -> None:
        stats: list[BatchStats] = []
        def handler(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            time.sleep(0.01)
            return {"y": batch["x"]}
        batcher = DynamicBatcher(handler, max_batch_size=2, batch_wait_timeout_s=0, max_queue_items=100,
                                 on_batch=stats.append)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit({"x": np.ones(1)})) for _ in range(10)]
        await asyncio.sleep(0)
        assert await batcher.drain_and_stop(5)
        assert all(t.done() and not t.exception() for t in tasks)
        assert sum(s.size for s in stats) == 10
        with pytest.raises(ModelNotReady):
            await batcher.submit({"x": np.ones(1)})
    run(scenario())


@pytest.mark.parametrize("kwargs,field", [({"max_batch_size": 0}, "max_batch_size"),
                                          ({"batch_wait_timeout_s": -1}, "batch_wait_timeout_s"),
                                          ({"max_queue_items": 0}, "max_queue_items")])
def test_constructor_rejects_bad_knobs_with_their_name(kwargs: dict[str, float], field: str) -> None:
    args = {"max_batch_size": 4, "batch_wait_timeout_s": 0.0, "max_queue_items": 10, **kwargs}
    with pytest.raises(ValueError, match=field):
        DynamicBatcher(lambda b: b, **args)  # type: ignore[arg-type]


def test_heavy_items_make_small_batches_by_weight() -> None:
    async def scenario() -> None:
        calls: list[int] = []
        batcher = DynamicBatcher(doubling(calls), max_batch_size=8, batch_wait_timeout_s=0, max_queue_items=100,
                                 item_weight=lambda b: 4)  # every item weighs 4 units
        batcher.start()
        out = await batcher.submit({"x": np.arange(5, dtype=np.float64)})
        np.testing.assert_array_equal(out["y"], np.arange(5) * 2)
        assert calls == [2, 2, 1], "8 units per batch: two items of weight 4"
        await batcher.drain_and_stop(1)
    run(scenario())


def test_a_request_that_would_only_time_out_is_refused_at_admission() -> None:
    async def scenario() -> None:
        def slow(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            time.sleep(0.05)
            return {"y": batch["x"]}
        batcher = DynamicBatcher(slow, max_batch_size=1, batch_wait_timeout_s=0, max_queue_items=1000,
                                 request_timeout_s=0.4)
        batcher.start()
        await batcher.submit({"x": np.ones(1)})  # measures the rate: ~20 items/s
        tasks = [asyncio.create_task(batcher.submit({"x": np.ones(1)})) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="would take"):
            await batcher.submit({"x": np.ones(3)})  # alone ~0.15 s, but ~0.3 s of queue > half the 0.4 s timeout
        with pytest.raises(PayloadTooLarge, match="10 items of weight 1 would take .* to run alone"):
            await batcher.submit({"x": np.ones(10)})  # ~0.5 s even alone: no retry helps, so 413, not 429
        await asyncio.gather(*tasks)
        await batcher.drain_and_stop(1)
    run(scenario())


@pytest.mark.parametrize("wait_when_idle", [False, True])
def test_a_lone_request_at_an_idle_batcher_waits_only_when_asked(wait_when_idle: bool) -> None:
    async def scenario() -> float:
        batcher = DynamicBatcher(doubling([]), max_batch_size=64, batch_wait_timeout_s=0.3, max_queue_items=100,
                                 wait_when_idle=wait_when_idle)
        batcher.start()
        start = time.monotonic()
        await batcher.submit({"x": np.ones(1)})
        elapsed = time.monotonic() - start
        await batcher.drain_and_stop(1)
        return elapsed
    elapsed = run(scenario())
    assert (elapsed >= 0.29) if wait_when_idle else (elapsed < 0.1), elapsed
