"""How an admitted request is billed, whatever way it ends: one state machine, one set of rules.

An `Account` follows one request from its reservation to its ledger row: the replica's events
tell it the usage (the engine's own counts, cumulative), the stream tells it what reached the
client. It ends exactly once, by `close(ending)`; later endings are ignored (a stream whose
client leaves after its final chunk stays completed).

The billing rules, by ending:
- COMPLETED: the engine finished and the client has the answer: prompt and completion billed.
- CANCELLED: the client went away. Billed what the engine generated up to then (and the prompt)
  once an engine took the request; nothing if it never started.
- FAILED: the replica or the engine failed. Billed only what was delivered to the client (a
  stream's chunks, and the prompt with them); a whole answer that never went out costs nothing.
- NOT_STARTED: no engine took it (the pool could not take it, or the engine refused it at
  once): nothing billed. Recorded as failed, or as cancelled when the client left first.
"""

from __future__ import annotations

from decimal import Decimal
from enum import Enum

from common.protocol import DELTA, END, START
from router.tenancy.pricing import Prices
from router.tenancy.quota import Grant
from router.tenancy.store import CANCELLED, COMPLETED, FAILED, Outcome, RequestInfo


class Ending(str, Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    NOT_STARTED = "not_started"


def billed_usage(ending: Ending, *, started: bool, delivered: bool) -> bool:
    """Whether the usage seen so far is billed (else nothing is): the rules above."""
    if ending is Ending.COMPLETED:
        return True
    if ending is Ending.CANCELLED:
        return started
    if ending is Ending.FAILED:
        return delivered
    return False


class Account:
    """One admitted request: its reservation, the usage its events report, and how it ended."""

    def __init__(self, info: RequestInfo, prices: Prices, grant: Grant, prompt_tokens: int):
        self.info, self.prices, self.grant = info, prices, grant
        self.prompt_tokens = prompt_tokens  # exact or bound until the replica reports
        self.completion_tokens = self.reasoning_tokens = 0
        self.identity: dict = {}
        self.started = False  # an engine took the request (its START event arrived)
        self.delivered = False  # some of the answer reached the client (a stream's chunk)
        self.outcome: Outcome | None = None  # set once, by close()
        self.settling = None  # the ledger write (asyncio.Future of the cost), once settling
        self.cost: Decimal | None = None
        self.status: str | None = None  # how it was settled (completed, cancelled, failed)
        self.billed: tuple[int, int, int] = (0, 0, 0)  # prompt, completion, reasoning tokens
        self.lease = None  # admitted out of a quota lease: the gate's handle to settle it there

    @property
    def max_tokens(self) -> int:
        return self.grant.max_tokens

    @property
    def rate_headers(self) -> dict[str, str]:
        return self.grant.headers.as_headers()

    @property
    def closed(self) -> bool:
        return self.outcome is not None

    def observe(self, event: dict, *, delivered: bool = False) -> None:
        """An event from the replica; delivered=True once the client has taken it (streams)."""
        kind = event["event"]
        if kind == START:
            self.started = True
            self.identity = {k: event.get(k) for k in ("replica", "node_id", "accelerator")}
            if event.get("prompt_tokens") is not None:
                self.prompt_tokens = event["prompt_tokens"]
        elif kind in (DELTA, END):
            # Cumulative counts: a delta carries the tokens generated up to and including it.
            if event.get("prompt_tokens") is not None:
                self.prompt_tokens = event["prompt_tokens"]  # the engine's own count
            if event.get("completion_tokens") is not None:
                self.completion_tokens = event["completion_tokens"]
                self.reasoning_tokens = event.get("reasoning_tokens") or 0
            self.delivered |= delivered

    def usage_with(self, event: dict) -> dict:
        """The usage billed once `event` (a delta) has been delivered too."""
        completion = event.get("completion_tokens")
        completion = self.completion_tokens if completion is None else completion
        reasoning = event.get("reasoning_tokens") if event.get("completion_tokens") is not None else self.reasoning_tokens
        prompt = event.get("prompt_tokens") or self.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "completion_tokens_details": {"reasoning_tokens": reasoning or 0}}

    def close(self, ending: Ending, error: str | None = None, *, client_left: bool = False) -> Outcome | None:
        """End the account by the rules; None if it had already ended (the first ending wins)."""
        if self.outcome is not None:
            return None
        billed = billed_usage(ending, started=self.started, delivered=self.delivered)
        prompt, completion, reasoning = ((self.prompt_tokens, self.completion_tokens, self.reasoning_tokens)
                                         if billed else (0, 0, 0))
        if ending is Ending.NOT_STARTED:
            status = CANCELLED if client_left else FAILED
        else:
            status = {Ending.COMPLETED: COMPLETED, Ending.CANCELLED: CANCELLED, Ending.FAILED: FAILED}[ending]
        self.cost = self.prices.cost(prompt, completion, reasoning)
        self.status, self.billed = status, (prompt, completion, reasoning)
        self.outcome = Outcome(status, prompt, completion, reasoning, self.cost, error=error and error[:512],
                               replica=self.identity.get("replica"), node_id=self.identity.get("node_id"),
                               accelerator=self.identity.get("accelerator"))
        return self.outcome
