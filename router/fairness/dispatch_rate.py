"""How fast the fleet has been taking work lately, in GPU-seconds dispatched per second: what
turns the work queued ahead of a request into an expected wait.

An exponentially decaying sum (time constant `window_s`), divided by the window it has really
seen: exact for a constant rate, also in the first seconds after start (a plain decayed sum would
read low then, and the first queue would look endless).
"""

from __future__ import annotations

import math


class DispatchRate:
    def __init__(self, window_s: float = 30.0, floor_gpu_s_per_s: float = 0.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self.floor = floor_gpu_s_per_s  # a lower bound (say, the fleet's GPUs x a small share)
        self._sum = 0.0
        self._last: float | None = None
        self._first: float | None = None

    def _decay_to(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._sum *= math.exp(-(now - self._last) / self.window_s)
        self._last = now if self._last is None else max(self._last, now)

    def record(self, gpu_s: float, now: float) -> None:
        if self._first is None:
            self._first = now
        self._decay_to(now)
        self._sum += gpu_s

    def rate(self, now: float) -> float:
        """GPU-seconds per second over the recent window (the floor while nothing was seen)."""
        if self._first is None:
            return self.floor
        self._decay_to(now)
        # The share of the window the counter has seen: 1 - e^(-elapsed / window), at least 1 s's.
        seen = max(now - self._first, 1.0)
        effective = self.window_s * (1.0 - math.exp(-seen / self.window_s))
        return max(self._sum / effective, self.floor)
