"""Group commit: one transaction for whatever queued while the previous one ran.

A tenant's reservations (and, apart, its settlements) go through one `GroupCommit` per ingress:
the first operation starts a transaction at once; operations that arrive while it runs wait and
go together in the next one, up to `max_batch`. No timer: a lone request pays one transaction as
before, and under load the number of transactions per request falls as the queue grows (the
tenant's lock was serialising them anyway). Each operation's future resolves only once its
transaction has committed, so "a client that got a complete answer has its row" still holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Run = Callable[[Callable[[list], list], list], Awaitable[list]]  # runs write_many(batch) off the loop


class GroupCommit:
    def __init__(self, run: Run, write_many: Callable[[list], list], max_batch: int = 256):
        self._run, self._write_many, self.max_batch = run, write_many, max_batch
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self.transactions = 0  # committed or failed, for tests and benchmarks

    def submit(self, item: Any) -> asyncio.Future:
        """The future of `item`'s result (write_many's answer for it), or of the exception its
        transaction raised (every operation of a failed transaction gets it)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return future

    async def _drain(self) -> None:
        batch: list[tuple[Any, asyncio.Future]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                self.transactions += 1
                try:
                    results = await self._run(self._write_many, [item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each caller decides (retry, or fail closed)
                    _fail(batch, exc)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:  # the writer was cancelled (shutdown): nobody may wait forever
            _fail(batch + self._queue, ConnectionError("the ledger writer stopped"))
            self._queue = []


def _fail(batch: list[tuple[Any, asyncio.Future]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
