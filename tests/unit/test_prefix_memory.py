"""router.routing.prefix_memory and the placer's use of it: what the router sent where, per replica
an LRU of prefix-chain segments bounded by its prefix cache, the longest chain match winning, a
dispatch moved to where Serve started it; and affinity yielding to load (a hot prefix spreads)."""

from common import protocol as P
from common.config import Objectives
from common.engine_model import L40S_TP2, EngineStats, published_stats
from common.prefix_cache import ChainCache
from router.routing.placer import Placer, PoolTerms
from router.routing.prefix_memory import PENDING_KEPT, PrefixMemory

SYS = ("sys", 4_000)
TURN1 = (SYS, ("c1-u0", 4_200))  # a conversation's first prompt: the system prompt, one user message
TURN2 = (*TURN1, ("c1-a0", 5_000), ("c1-u1", 5_150))  # the next: + its answer + a new message


def memory(capacity: int = 10_000, *replicas: str) -> PrefixMemory:
    m = PrefixMemory()
    for rid in replicas or ("a", "b"):
        m.capacity(rid, capacity)
    return m


def test_a_shared_root_is_held_once_and_a_chain_matches_from_its_start():
    cache = ChainCache(10_000)
    cache.store(TURN1)
    cache.store((SYS, ("c2-u0", 4_100)))
    assert cache.used_tokens == 4_000 + 200 + 100
    assert cache.match(TURN2) == (2, 4_200)  # sys, then turn 1's prompt; its answer is not held
    assert cache.match((("other", 3_000), ("c1-u0", 4_200))) == (0, 0)  # a key is found only through its parent


def test_the_memory_forgets_beyond_the_replicas_prefix_cache_least_recently_used_first():
    m = memory(10_000)
    for tenant in range(3):
        m.sent(f"r{tenant}", "a", ((f"t{tenant}", 4_000),))
    assert [m.cached("a", ((f"t{t}", 4_000),)) for t in range(3)] == [0, 4_000, 4_000]  # 12k > 10k: t0 went
    m.sent("r3", "a", (("t1", 4_000),))  # touched: t2 is now the least recently used
    m.sent("r4", "a", (("t3", 4_000),))
    assert [m.cached("a", ((f"t{t}", 4_000),)) for t in range(4)] == [0, 4_000, 0, 4_000]
    m.sent("r5", "a", (("huge", 20_000),))  # larger than the whole cache: not held, evicts nothing
    assert m.cached("a", (("huge", 20_000),)) == 0 and m.cached("a", (("t3", 4_000),)) == 4_000
    m.capacity("a", 4_000)  # a smaller profile: evicts down to it
    assert m.cached("a", (("t1", 4_000),)) == 0 and m.cached("a", (("t3", 4_000),)) == 4_000


def test_a_conversations_turns_age_out_before_its_system_prompt():
    m = memory(6_000)
    m.sent("r1", "a", TURN2)  # 5 150 tokens: sys 4 000 + three turn segments
    m.sent("r2", "a", (SYS, ("c2-u0", 5_000)))  # another chat of the tenant: 1 000 more
    # Over 6 000: the oldest segment goes, and a chain is stored deepest first, so that is the
    # deepest part of the first conversation, never the system prompt both share.
    assert m.cached("a", TURN2) == 5_000 and m.cached("a", (SYS,)) == 4_000


def test_the_longest_match_wins_the_placement():
    p = Placer({"short": PoolTerms("short", L40S_TP2, 5.2, 40_960)}, Objectives())
    idle = {**published_stats(EngineStats(0, 0, 0.0, 0), "L40S_TP2"), P.STAT_TIME: 100.0}
    rows = [("short", rid, idle) for rid in ("s1", "s2", "s3")]
    p.views(rows, 100.0)  # the placer learns each replica's prefix cache size
    p.prefixes.sent("old-1", "s1", (SYS,))  # s1 served the tenant; s2 served this very conversation
    p.prefixes.sent("old-2", "s2", TURN1)
    placement = p.place(p.views(rows, 100.0), 5_150, {"short"}, TURN2)
    assert placement.chosen.replica_id == "s2" and placement.chosen.prefix_cached_tokens == 4_200
    assert {q.replica_id: q.prefix_cached_tokens for q in placement.predictions} == {"s1": 4_000, "s2": 4_200, "s3": 0}
    p.dispatched(placement, "new", now=100.0)
    # The rest of the prompt is in the engine's cache only once computed: a twin request sent
    # meanwhile gets no hit from it.
    assert p.prefixes.cached("s2", TURN2) == 4_200
    p.views(rows, 100.0 + placement.chosen.ttft_s)
    assert p.prefixes.cached("s2", TURN2) == 5_150


def test_started_on_another_replica_moves_what_that_dispatch_added():
    m = memory(10_000)
    m.sent("old", "a", (SYS,))
    m.sent("k", "a", TURN1)  # added c1-u0 only: sys was there before
    m.started("k", "b")
    assert m.cached("a", TURN1) == 4_000  # the tenant's system prompt stays where it was
    assert m.cached("b", TURN1) == 4_200
    m.sent("k2", "a", TURN2)
    m.started("k2", "a")  # started where it was sent: nothing moves
    assert m.cached("a", TURN2) == 5_150
    m.started("unknown", "a")  # a start never dispatched (or long forgotten) is ignored


def test_a_refused_request_is_forgotten_and_pending_dispatches_are_bounded():
    m = memory(10_000)
    m.sent("k", "a", TURN1)
    m.forget("k")
    assert m.cached("a", TURN1) == 0
    for i in range(PENDING_KEPT + 10):
        m.sent(f"r{i}", "a", ((f"p{i}", 1),))
    assert len(m._pending) == PENDING_KEPT


def _l40s_rows(**by_replica) -> list:
    out = []
    for rid, engine in by_replica.items():
        stats = published_stats(EngineStats(**{"running": 0, "waiting": 0, "kv_usage": 0.0, "queued_tokens": 0,
                                               **engine}), "L40S_TP2")
        out.append(("short", rid, {**stats, P.STAT_TIME: 100.0}))
    return out


def test_a_hot_prefix_does_not_pile_up_on_the_replica_holding_it():
    """A burst of one tenant's requests (4k-token system prompt, held by replica a) arrives faster
    than any stats report. The holder takes them while its predictions meet the objectives (each
    costs it 200 tokens of prefill, the other replica 4 200): affinity yields as soon as the queue
    it has been given would make the next one late, never past that; once the other replica has
    computed the prefix for a request it took (its predicted prefill done), it holds the prefix
    too and takes its share."""

    def burst(gap_s: float) -> tuple[str, list]:
        p = Placer({"short": PoolTerms("short", L40S_TP2, 5.2, 40_960)}, Objectives())
        rows = _l40s_rows(a={}, b={})
        p.views(rows, 100.0)
        p.prefixes.sent("earlier", "a", (SYS,))
        chosen = []
        for i in range(48):
            now = 100.1 + i * gap_s
            placement = p.place(p.views(rows, now), 4_200, {"short"}, (SYS, (f"c{i}", 4_200)))
            p.dispatched(placement, f"k{i}", now=now)
            chosen.append(placement)
        return "".join(c.chosen.replica_id for c in chosen), chosen

    at_once, chosen = burst(0.0)
    assert at_once[:16] == "a" * 16 and "b" in at_once[:40]  # affinity while it keeps the objectives
    # Never past them while the other replica would keep them (then both are late: the least late).
    assert all(c.chosen.meets or not any(q.meets for q in c.predictions) for c in chosen)
    spread, _ = burst(0.05)  # 2.4 s: b's first prefill is done midway
    assert spread[0] == "a" and "bbbb" in spread


def test_affinity_yields_to_a_holder_whose_queue_makes_it_slower():
    p = Placer({"short": PoolTerms("short", L40S_TP2, 5.2, 40_960)}, Objectives())
    chain = (SYS, ("c9", 4_200))
    for rows, expected in ((_l40s_rows(a={"running": 4, "kv_usage": 0.1}, b={"running": 4, "kv_usage": 0.1}), "a"),
                           # a long prefill queue: the cached prefix cannot make its first token in time
                           (_l40s_rows(a={"waiting": 6, "prefill_tokens": 12_000}, b={}), "b"),
                           # a busy batch that still keeps the objectives: the prefix holds it
                           (_l40s_rows(a={"running": 40, "kv_usage": 0.7}, b={"running": 4, "kv_usage": 0.1}), "a"),
                           # a batch of long contexts: every token would come too late there
                           (_l40s_rows(a={"running": 60, "kv_usage": 0.9, "context_tokens": 300_000},
                                       b={"running": 4, "kv_usage": 0.1}), "b")):
        p.views(rows, 100.0)
        p.prefixes.sent("earlier", "a", (SYS,))
        placement = p.place(p.views(rows, 100.0), 4_200, {"short"}, chain)
        assert placement.chosen.replica_id == expected, rows
        assert {q.replica_id: q.prefix_cached_tokens for q in placement.predictions} == {"a": 4_000, "b": 0}


def test_the_predicted_prefill_is_the_uncached_part():
    p = Placer({"short": PoolTerms("short", L40S_TP2, 5.2, 40_960)}, Objectives())
    rows = _l40s_rows(a={}, b={})
    p.views(rows, 100.0)
    p.prefixes.sent("earlier", "a", (SYS,))
    placement = p.place(p.views(rows, 100.0), 4_200, {"short"}, (SYS, ("c", 4_200)))
    by_id = {q.replica_id: q for q in placement.predictions}
    assert by_id["a"].prefix_cached_tokens == 4_000 and by_id["b"].prefix_cached_tokens == 0
    assert by_id["a"].ttft_s < by_id["b"].ttft_s / 5
    p.dispatched(placement, "k", now=100.0)
    later = p.view("short", "a", {**rows[0][2], P.STAT_TIME: 99.0}, 100.1)
    assert later.queued_prefill_tokens == 200  # the burst's next request sees only its uncached prefill
