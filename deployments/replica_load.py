"""What a replica holds right now, published to the router as routing stats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray import serve
from ray.serve._private.constants import SERVE_NAMESPACE

from common.protocol import (STAT_CONTEXT_TOKENS, STAT_ONGOING_REQUESTS, STAT_PREFILL_TOKENS, STAT_PREFILLED_TOTAL,
                             STAT_QUEUED_TOKENS)


@dataclass
class ReplicaLoadTracker:
    queued_tokens: int = 0
    ongoing_requests: int = 0
    completed: int = 0
    cancelled: int = 0
    cancelled_completion_tokens: int = 0  # generated for requests cancelled before they finished
    # Prompt tokens of held requests that have no first token yet: the prefill queued here, as an
    # engine that does not report its own (vLLM's runs in another process) is seen from outside.
    prefill_tokens: int = 0
    prefilled_total: int = 0  # prompt tokens whose first token came (cache hits included: not seen here)
    # Held requests' prompts and their generated-so-far counters: their context, what attention
    # reads per step (an engine in another process does not report it).
    _contexts: dict[int, tuple[int, Callable[[], int] | None]] = field(default_factory=dict)

    def begin(self, work_tokens: int, prompt_tokens: int = 0) -> None:
        self.queued_tokens += work_tokens
        self.ongoing_requests += 1
        self.prefill_tokens += prompt_tokens

    def hold(self, key: int, prompt_tokens: int, generated: Callable[[], int] | None) -> None:
        self._contexts[key] = (prompt_tokens, generated)

    def release(self, key: int) -> None:
        self._contexts.pop(key, None)

    def context_tokens(self) -> int:
        return sum(prompt + (generated() if generated else 0) for prompt, generated in self._contexts.values())

    def prefilled(self, prompt_tokens: int) -> None:
        """The request's first token came: its prompt is no longer queued prefill."""
        self.prefill_tokens -= prompt_tokens
        self.prefilled_total += prompt_tokens

    def end(self, work_tokens: int, *, cancelled: bool, generated: int = 0, unprefilled_tokens: int = 0) -> None:
        self.queued_tokens -= work_tokens
        self.ongoing_requests -= 1
        self.prefill_tokens -= unprefilled_tokens
        if cancelled:
            self.cancelled += 1
            self.cancelled_completion_tokens += generated
        else:
            self.completed += 1

    def routing_stats(self) -> dict[str, int]:
        return {STAT_QUEUED_TOKENS: self.queued_tokens, STAT_ONGOING_REQUESTS: self.ongoing_requests,
                STAT_PREFILL_TOKENS: self.prefill_tokens, STAT_CONTEXT_TOKENS: self.context_tokens(),
                STAT_PREFILLED_TOTAL: self.prefilled_total}

    def totals(self) -> dict[str, int]:
        return {"completed": self.completed, "cancelled": self.cancelled,
                "cancelled_completion_tokens": self.cancelled_completion_tokens}


@dataclass(frozen=True)
class ReplicaIdentity:
    """Where a replica runs; published with its stats so a routing decision can name it."""

    replica: str
    pool: str
    accelerator: str
    node_id: str

    @classmethod
    def current(cls, pool: str, accelerator: str) -> "ReplicaIdentity":
        """The identity of the Serve replica this is called in."""
        return cls(
            replica=serve.get_replica_context().replica_id.unique_id,
            pool=pool,
            accelerator=accelerator,
            node_id=ray.get_runtime_context().get_node_id(),
        )

    def as_dict(self) -> dict[str, str]:
        return {"replica": self.replica, "pool": self.pool, "accelerator": self.accelerator, "node_id": self.node_id}


def caller_alive(actor_name: str) -> bool | None:
    """Whether the ingress replica (a Serve actor) that sent a request still lives: False once Ray
    no longer knows the name (a dead actor's name is released within ~0.3 s of its process dying,
    measured), None when Ray cannot be asked now. ~1.3 ms per call (a GCS lookup)."""
    try:
        ray.get_actor(actor_name, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    except Exception:  # noqa: BLE001 - GCS unreachable or slow: do not decide now
        return None
    return True

