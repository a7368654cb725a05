"""The prefill flowing into each replica, from the counter it publishes (common.protocol
STAT_PREFILLED_TOTAL). Pure: callers pass the stats' own time.

Chunked prefill shares every step with the decodes, so a replica that keeps receiving prompts
stretches every running sequence's time per token by about 1 / (1 - its prefill share of the
GPU). The queue a replica holds now says nothing of the prompts that will arrive while a request
decodes there for a minute; the recent rate does. Counted from the replica's own counter, so it
sees every ingress replica's dispatches, not only this one's."""

from __future__ import annotations

import math

MIN_INTERVAL_S = 0.5  # between two readings used for a rate (stats come every 0.2 s)
TIME_CONSTANT_S = 10.0  # of the moving average: a few answers' worth of arrivals


class PrefillInflow:
    def __init__(self, time_constant_s: float = TIME_CONSTANT_S) -> None:
        self._tau = time_constant_s
        self._last: dict[str, tuple[float, int]] = {}  # replica -> (stats time, counter)
        self._rate: dict[str, float] = {}

    def observe(self, replica_id: str, stats_time: float, prefilled_total: int) -> float:
        """Take a reading; the replica's prefill tokens per second, moving average."""
        last = self._last.get(replica_id)
        if last is None or prefilled_total < last[1]:  # first reading, or the replica restarted
            self._last[replica_id] = (stats_time, prefilled_total)
            return self._rate.setdefault(replica_id, 0.0)
        elapsed = stats_time - last[0]
        if elapsed >= MIN_INTERVAL_S:
            rate = self._rate.get(replica_id, 0.0)
            instant = (prefilled_total - last[1]) / elapsed
            self._rate[replica_id] = rate + (1.0 - math.exp(-elapsed / self._tau)) * (instant - rate)
            self._last[replica_id] = (stats_time, prefilled_total)
        return self._rate.get(replica_id, 0.0)
