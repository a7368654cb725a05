"""What a replica holds right now, published to the router as routing stats."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.protocol import STAT_ONGOING_REQUESTS, STAT_QUEUED_TOKENS


@dataclass
class ReplicaLoadTracker:
    queued_tokens: int = 0
    ongoing_requests: int = 0
    completed: int = 0
    cancelled: int = 0

    def begin(self, work_tokens: int) -> None:
        self.queued_tokens += work_tokens
        self.ongoing_requests += 1

    def end(self, work_tokens: int, *, cancelled: bool) -> None:
        self.queued_tokens -= work_tokens
        self.ongoing_requests -= 1
        if cancelled:
            self.cancelled += 1
        else:
            self.completed += 1

    def routing_stats(self) -> dict[str, int]:
        return {STAT_QUEUED_TOKENS: self.queued_tokens, STAT_ONGOING_REQUESTS: self.ongoing_requests}
