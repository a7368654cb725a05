from router.routing.load_book import LoadBook, ReplicaLoad, booking_target, rank


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


def test_book_add_move_release():
    f = LoadBook()
    f.book("a", "r1", 100)
    f.book("a", "r2", 50)
    assert (f.tokens("a"), f.requests("a")) == (150, 2)
    f.book("b", "r1", 100)  # re-routed
    assert (f.tokens("a"), f.tokens("b")) == (50, 100)
    assert f.booked_on("r1") == "b"
    f.release("r1")
    f.release("r1")  # twice is harmless
    assert f.snapshot_tokens() == {"a": 50}
    assert f.booked_on("r1") is None


def test_booking_target_is_the_first_rank_with_room():
    assert booking_target(["a", "b", "c"], lambda r: r != "a") == "b"
    assert booking_target(["a", "b"], lambda r: False) == "a"  # all full: Serve waits on the first


def test_rank_and_book_books_the_expected_pick_and_ranks_it_loaded_next_time():
    f = LoadBook()
    first = f.rank_and_book("r1", 500, [f.load("a"), f.load("b", reported_tokens=100)], lambda r: True)
    assert [l.replica_id for l in first] == ["a", "b"] and f.booked_on("r1") == "a"
    second = f.rank_and_book("r2", 500, [f.load("a"), f.load("b", reported_tokens=100)], lambda r: True)
    assert second[0].replica_id == "b"  # a now carries r1's 500 booked tokens
    f.rank_and_book("r3", 10, [f.load("a"), f.load("b")], lambda r: r == "b")
    assert f.booked_on("r3") == "b"  # a ranks first but has no room


def test_token_ranking_spreads_a_mixed_burst_better_than_counting():
    """The same burst, booked as it is routed (as TokenLoadRouter does)."""
    burst = [3_000, 50] * 10

    def spread(metric):
        f = LoadBook()
        for i, tokens in enumerate(burst):
            f.rank_and_book(str(i), tokens, [f.load(k) for k in "ab"], lambda r: True, metric)
        return abs(f.tokens("a") - f.tokens("b"))

    assert spread("tokens") < spread("requests")
