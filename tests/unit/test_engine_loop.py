"""The stub replica's real-time step loop, on a fake clock (no waiting)."""

import asyncio
import dataclasses

import pytest

from deployments.engine_loop import EngineLoop
from common.engine_model import GPUProfile

FAST = GPUProfile(name="fast", max_num_batched_tokens=100, max_num_seqs=8, kv_capacity_tokens=10_000,
                  base_s=0.01, prefill_s_per_token=0.001, decode_s_per_seq=0.002,
                  attention_s_per_kv_token=0.0)


class FakeTime:
    """A clock that a sleep moves forward, so a test sees modelled time without waiting."""

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def loop_on_fake_time(profile=FAST, time_scale=1.0):
    t = FakeTime()
    return EngineLoop(profile, time_scale, sleep=t.sleep, clock=t.clock), t


async def read_all(progress) -> list[int]:
    """Counts a reader sees, one per wake-up, until the request finishes."""
    seen = []
    while not progress.finished:
        await progress.changed.wait()
        progress.changed.clear()
        seen.append(progress.generated)
    return seen


def test_requests_get_their_tokens_in_modelled_time():
    async def go():
        loop, t = loop_on_fake_time()
        a = loop.submit("a", 50, 5)
        b = loop.submit("b", 50, 3)
        seen_a, seen_b = await asyncio.gather(read_all(a), read_all(b))
        return loop, t, a, b, seen_a, seen_b

    loop, t, a, b, seen_a, seen_b = asyncio.run(go())
    assert (a.generated, b.generated) == (5, 3)
    assert seen_a == [1, 2, 3, 4, 5] and seen_b == [1, 2, 3]  # a reader that keeps up: every step
    # Step 1 prefills both prompts (100 tokens) and samples both first tokens: 0.01 + 0.1 + 0 s.
    assert a.first_token_at == pytest.approx(0.11) and b.first_token_at == pytest.approx(0.11)
    # then 2 decode steps of both (0.014 s) and 2 of a alone (0.012 s)
    assert t.now == pytest.approx(0.11 + 2 * 0.014 + 2 * 0.012)
    assert loop.busy_s == pytest.approx(t.now) and loop.steps == 5
    assert loop.stats().running == 0 and loop.stats().kv_usage == 0


def test_time_scale_runs_the_same_steps_faster():
    async def go(scale):
        loop, t = loop_on_fake_time(time_scale=scale)
        await read_all(loop.submit("a", 250, 20))
        return loop.busy_s, t.now

    busy1, wall1 = asyncio.run(go(1.0))
    busy4, wall4 = asyncio.run(go(4.0))
    assert busy1 == pytest.approx(busy4)  # the same engine work
    assert wall4 == pytest.approx(wall1 / 4)


def test_a_slow_reader_sees_tokens_coalesced():
    async def go():
        loop, t = loop_on_fake_time()
        progress = loop.submit("a", 10, 30)
        while t.now < 0.2:  # the reader is busy elsewhere while ~10 steps run
            await asyncio.sleep(0)
        first_read = progress.generated
        await read_all(progress)
        return first_read, progress.generated

    first_read, total = asyncio.run(go())
    assert 5 < first_read < 30 and total == 30


def test_cancel_frees_the_engine_and_the_loop_stops_when_idle():
    async def go():
        loop, t = loop_on_fake_time()
        a = loop.submit("a", 10, 1_000)
        b = loop.submit("b", 10, 2)
        await read_all(b)
        assert loop.stats().running == 1
        loop.cancel("a")
        for _ in range(10):
            await asyncio.sleep(0)
        return loop, a

    loop, a = asyncio.run(go())
    assert not a.finished and loop.stats().running == 0 and loop.stats().kv_usage == 0
    assert loop._task.done()  # no step loop spins on an idle engine


def test_kv_full_requests_wait_in_the_queue():
    async def go():
        loop, t = loop_on_fake_time(dataclasses.replace(FAST, kv_capacity_tokens=1_000))
        first = loop.submit("first", 600, 300)
        second = loop.submit("second", 600, 10)  # does not fit beside the first
        await asyncio.sleep(0)
        waiting = loop.stats().waiting
        await asyncio.gather(read_all(first), read_all(second))
        return waiting, first, second

    waiting, first, second = asyncio.run(go())
    assert waiting == 1
    assert second.first_token_at > first.first_token_at + 290 * 0.01  # after the first's decode


def test_bad_requests_are_refused_before_they_queue():
    async def go():
        loop, _ = loop_on_fake_time()
        with pytest.raises(ValueError):
            loop.submit("big", 9_000, 2_000)
        return loop.stats()

    assert asyncio.run(go()).waiting == 0
    with pytest.raises(ValueError):
        EngineLoop(FAST, time_scale=0)
