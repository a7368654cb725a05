"""Client-side timing of OpenAI chat requests: latency, time to first token, gaps between tokens."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Sample:
    status: int
    started: float  # perf_counter at send
    latency_s: float  # send to the last byte
    ttft_s: float | None = None  # send to the first chunk with text (streams only)
    token_gaps_s: list[float] = field(default_factory=list)  # between chunks with text
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (streams only)."""
        if self.ttft_s is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.completion_tokens - 1)


def _has_text(chunk: dict) -> bool:
    choices = chunk.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content"))


async def timed_chat(client: httpx.AsyncClient, path: str, body: dict) -> Sample:
    started = time.perf_counter()
    if not body.get("stream"):
        response = await client.post(path, json=body)
        latency = time.perf_counter() - started
        usage = response.json().get("usage") or {} if response.status_code == 200 else {}
        return Sample(response.status_code, started, latency, completion_tokens=usage.get("completion_tokens"))
    sample = Sample(0, started, 0.0)
    async with client.stream("POST", path, json=body) as response:
        sample.status = response.status_code
        if response.status_code != 200:
            await response.aread()
        else:
            last = None
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                now = time.perf_counter()
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    sample.completion_tokens = chunk["usage"].get("completion_tokens")
                if _has_text(chunk):
                    if last is None:
                        sample.ttft_s = now - started
                    else:
                        sample.token_gaps_s.append(now - last)
                    last = now
    sample.latency_s = time.perf_counter() - started
    return sample


async def closed_loop(client: httpx.AsyncClient, path: str, body_for: Callable[[int], dict],
                      concurrency: int, duration_s: float) -> tuple[list[Sample], float]:
    """`concurrency` clients, each sending its next request when the last one ends, for
    `duration_s`. Returns the samples and the time it took (last request included)."""
    samples: list[Sample] = []
    deadline = time.perf_counter() + duration_s
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            samples.append(await timed_chat(client, path, body_for(next(counter))))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
