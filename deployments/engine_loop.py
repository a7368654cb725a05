"""Runs an EngineModel in real time: one step loop per stub replica, shared by all its requests.

Each request waits on its own `Progress`; the loop takes engine steps back to back while the
engine holds work, sleeps each step's modelled duration (divided by `time_scale`) and then hands
every scheduled request its tokens. So a replica holding 40 requests answers each of them the way a
loaded GPU would: one step at a time, longer steps as the batch grows, a queue once KV is full.

A consumer that reads slower than the steps come sees its tokens coalesced (it reads the count,
not one event per token), as vLLM's output collector merges outputs a slow client has not taken.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.engine_model import EngineModel, EngineStats, GPUProfile
from common.prefix_cache import PrefixChain

# Behind schedule by more than this (a starved event loop), the loop stops trying to catch up:
# it would otherwise run a burst of steps with no sleep and hand out tokens faster than a GPU.
MAX_LAG_S = 0.5
# Nothing schedulable although the engine holds requests (a step that only preempted): retry soon.
RETRY_S = 0.001


@dataclass
class Progress:
    """One request's view of the engine: tokens so far, and whether it is done."""

    generated: int = 0
    first_token_at: float | None = None  # monotonic time the first token was handed out
    finished: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set on new tokens or finish
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def _advance(self, tokens: int, finished: bool, now: float) -> None:
        if tokens and self.first_token_at is None:
            self.first_token_at = now
        self.generated += tokens
        if finished:
            self.finished = True
            self.done.set()
        self.changed.set()


class EngineLoop:
    def __init__(self, profile: GPUProfile, time_scale: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, scheduling: str = "fcfs"):
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self._engine = EngineModel(profile, scheduling)
        self._scale = time_scale
        self._sleep, self._clock = sleep, clock
        self._progress: dict[str, Progress] = {}
        self._task: asyncio.Task | None = None
        self.steps = 0  # engine steps taken (for stats and tests)
        self.busy_s = 0.0  # modelled engine time spent in steps

    def submit(self, request_id: str, prompt_tokens: int, output_tokens: int,
               prefix_key: str | None = None, prefix_tokens: int = 0, chain: PrefixChain = (),
               priority: int = 0) -> Progress:
        """Queue a request; raises ValueError when the engine cannot take it (see EngineModel.add)."""
        self._engine.add(request_id, prompt_tokens, output_tokens, prefix_key, prefix_tokens, chain, priority)
        progress = self._progress[request_id] = Progress()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return progress

    def cancel(self, request_id: str) -> None:
        """The client left, or a stop string ended the answer: free its KV (no-op when finished)."""
        self._engine.cancel(request_id)
        self._progress.pop(request_id, None)

    def stats(self) -> EngineStats:
        return self._engine.stats()

    async def _run(self) -> None:
        deadline = self._clock()
        while not self._engine.idle:
            result = self._engine.step()
            if not result.requests:
                await self._sleep(RETRY_S)
                deadline = self._clock()
                continue
            self.steps += 1
            self.busy_s += result.duration_s
            deadline = max(deadline + result.duration_s / self._scale, self._clock() - MAX_LAG_S)
            await self._sleep(max(0.0, deadline - self._clock()))
            now = self._clock()
            for request_id, step in result.requests.items():
                progress = self._progress.get(request_id)
                if progress is None:
                    continue  # cancelled while the step ran
                progress._advance(step.tokens, step.finished, now)
                if step.finished:
                    del self._progress[request_id]
