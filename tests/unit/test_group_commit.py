"""GroupCommit (router/tenancy/group_commit.py): what queues while a transaction runs goes in the
next one; each caller gets its own answer, or the failed transaction's exception."""

import asyncio

import pytest

from router.tenancy.group_commit import GroupCommit


class SlowDatabase:
    def __init__(self) -> None:
        self.batches: list[list] = []
        self.poison: set = set()  # a transaction holding one of these fails

    async def run(self, write_many, batch):
        await asyncio.sleep(0.01)  # the transaction takes a while: others queue meanwhile
        return write_many(batch)

    def write_many(self, batch: list) -> list:
        self.batches.append(list(batch))
        if self.poison & set(batch):
            raise ConnectionError("database gone")
        return [item * 10 for item in batch]


async def test_a_lone_operation_is_written_at_once_and_a_queue_in_few_transactions():
    db = SlowDatabase()
    group = GroupCommit(db.run, db.write_many, max_batch=4)
    assert await group.submit(1) == 10
    assert db.batches == [[1]]
    first = group.submit(2)
    await asyncio.sleep(0)  # its transaction starts: the next ten queue behind it
    results = await asyncio.gather(first, *(group.submit(i) for i in range(3, 13)))
    assert results == [i * 10 for i in range(2, 13)]
    assert db.batches[1:] == [[2], [3, 4, 5, 6], [7, 8, 9, 10], [11, 12]]  # at most 4 each, in order
    assert group.transactions == 5


async def test_a_failed_transaction_fails_each_of_its_operations_and_not_the_next():
    db = SlowDatabase()
    group = GroupCommit(db.run, db.write_many)
    db.poison = {2}
    first = group.submit(1)
    await asyncio.sleep(0)  # its transaction has started: the next two queue together
    second, third = group.submit(2), group.submit(3)
    assert await first == 10  # it was alone in its transaction, which committed
    with pytest.raises(ConnectionError):
        await second
    with pytest.raises(ConnectionError):
        await third
    assert await group.submit(4) == 40
    assert db.batches == [[1], [2, 3], [4]]


async def test_a_writer_cancelled_mid_transaction_leaves_nobody_waiting():
    db = SlowDatabase()
    group = GroupCommit(db.run, db.write_many)
    first = group.submit(1)
    await asyncio.sleep(0)
    second = group.submit(2)  # queued behind the transaction under way
    group._writer.cancel()  # the ingress shuts down
    for waiter in (first, second):
        with pytest.raises(ConnectionError):
            await waiter
    assert await group.submit(3) == 30  # a new writer serves what comes next
