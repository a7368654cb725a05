from router.balancing import ReplicaLoad, rank
from router.inflight import InFlight


def test_rank_by_tokens_not_requests():
    loads = [ReplicaLoad("a", reported_tokens=6_000, reported_requests=2),
             ReplicaLoad("b", reported_tokens=300, reported_requests=6)]
    assert rank(loads, "tokens") == ["b", "a"]
    assert rank(loads, "requests") == ["a", "b"]


def test_fresh_local_work_outweighs_stale_report():
    stale = ReplicaLoad("a", reported_tokens=0, local_tokens=3_000)
    assert stale.tokens == 3_000
    assert rank([stale, ReplicaLoad("b", reported_tokens=100)]) == ["b", "a"]


def test_report_counts_other_routers_traffic():
    assert ReplicaLoad("a", reported_tokens=9_000, local_tokens=10).tokens == 9_000


def test_ties_break_on_requests_then_id():
    loads = [ReplicaLoad("b", 100, 1), ReplicaLoad("a", 100, 1), ReplicaLoad("c", 100, 0)]
    assert rank(loads) == ["c", "a", "b"]
    assert rank([ReplicaLoad("b", 1, 1), ReplicaLoad("a", 900, 1)], "requests") == ["a", "b"]


def test_inflight_add_move_remove():
    f = InFlight()
    f.add("a", "r1", 100)
    f.add("a", "r2", 50)
    assert (f.tokens("a"), f.requests("a")) == (150, 2)
    f.add("b", "r1", 100)  # re-routed
    assert (f.tokens("a"), f.tokens("b")) == (50, 100)
    f.remove("r1")
    f.remove("r1")  # twice is harmless
    assert f.snapshot_tokens() == {"a": 50}


def test_token_ranking_spreads_a_mixed_burst_better_than_counting():
    """The same burst, booked as it is routed (as TokenLoadRouter does)."""
    burst = [3_000, 50] * 10

    def spread(metric):
        f = InFlight()
        for i, tokens in enumerate(burst):
            target = rank([ReplicaLoad(k, local_tokens=f.tokens(k), local_requests=f.requests(k)) for k in "ab"], metric)[0]
            f.add(target, str(i), tokens)
        return abs(f.tokens("a") - f.tokens("b"))

    assert spread("tokens") < spread("requests")
