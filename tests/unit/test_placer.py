"""router.routing.placer: published stats -> views -> a placement, and what the placer learns."""

import math

import pytest

from common import protocol as P
from common.config import Objectives
from common.engine_model import H100_TP1, L40S_TP2, EngineStats, published_stats
from router.admission import admit
from router.context_cap import OverflowPolicy
from router.routing.correction import BOUNDS, TTFTCorrection
from router.routing.load_book import ranked, LoadBook
from router.routing.placer import RECENT_S, LikelyOutput, Placer, PoolTerms
from router.routing.pools import PREDICTED, PoolLimits

TERMS = {"short": PoolTerms("short", L40S_TP2, 5.2, 40_960), "long": PoolTerms("long", H100_TP1, 7.0, 40_960),
         "blind": PoolTerms("blind", None, 1.0, 40_960)}
IDLE = EngineStats(running=0, waiting=0, kv_usage=0.0, queued_tokens=0)


def stats(profile: str = "", at: float = 100.0, **engine) -> dict:
    out = published_stats(EngineStats(**{**IDLE.__dict__, **engine}), profile) if profile else {
        P.STAT_RUNNING: engine.get("running", 0)}
    return {**out, P.STAT_TIME: at}


def placer() -> Placer:
    return Placer(TERMS, Objectives())


def test_a_view_takes_the_replicas_own_profile_scaled_else_the_pools_else_none():
    p = placer()
    fast = p.view("short", "s1", {**stats("H100_TP1"), P.STAT_TIME_SCALE: 4.0}, now=100.0)
    assert fast.profile.name == H100_TP1.name and fast.profile.base_s == pytest.approx(H100_TP1.base_s / 4)
    assert p.view("short", "s2", stats(), now=100.0).profile is L40S_TP2  # the pool's, unscaled
    assert p.view("blind", "b1", stats(), now=100.0) is None  # nothing to predict with
    assert p.view("gone", "g1", stats("H100_TP1"), now=100.0) is None  # a pool this config does not serve


def test_engine_state_maps_onto_the_view():
    v = placer().view("long", "l1", stats("H100_TP1", running=5, waiting=2, prefill_tokens=3000, kv_usage=0.5), 100.0)
    assert (v.running, v.waiting, v.queued_prefill_tokens) == (5, 2, 3000)
    assert v.kv_tokens == H100_TP1.kv_capacity_tokens // 2


def test_dispatches_newer_than_the_stats_are_added_and_forgotten_once_stale():
    p = placer()
    placement = p.place(p.views([("short", "s1", stats("L40S_TP2", at=100.0))], 100.0), 700, {"short"})
    p.dispatched(placement, "req-old", now=99.0)  # already in the stats taken at 100
    p.dispatched(placement, "req-new", now=100.5)
    v = p.view("short", "s1", stats("L40S_TP2", at=100.0), now=100.6)
    assert (v.waiting, v.queued_prefill_tokens) == (1, 700)
    v = p.view("short", "s1", stats("L40S_TP2", at=100.0), now=100.5 + RECENT_S + 0.1)
    assert (v.waiting, v.queued_prefill_tokens) == (0, 0)  # a lost report cannot keep it busy forever


def test_started_moves_a_dispatch_to_the_replica_serve_chose():
    p = placer()
    rows = [("short", "s1", stats("L40S_TP2")), ("short", "s2", stats("L40S_TP2"))]
    placement = p.place(p.views(rows, 100.0), 700, {"short"})
    p.dispatched(placement, "k", now=100.1)
    other = "s2" if placement.chosen.replica_id == "s1" else "s1"
    p.started("k", other)
    assert p.view("short", other, rows[0][2], 100.2).waiting == 1
    assert p.view("short", placement.chosen.replica_id, rows[0][2], 100.2).waiting == 0


def test_a_chat_goes_to_the_class_that_just_holds_it_and_a_long_prompt_to_the_faster_one():
    p = placer()
    views = p.views([("short", "s1", stats("L40S_TP2")), ("long", "l1", stats("H100_TP1"))], 100.0)
    chat = p.place(views, 700, {"short", "long"})
    assert chat.pool == "short" and chat.replicas == ("s1",) and {q.pool for q in chat.predictions} == {"short", "long"}
    assert "meets the objectives" in chat.reason()
    assert p.place(views, 20_000, {"short", "long"}).pool == "long"  # an idle L40S misses its TTFT
    assert p.place(views, 20_000, {"short"}).pool == "short"  # the tenant's pools only: the best it has
    assert p.place(views, 700, {"blind"}) is None


def test_a_swamped_cheap_replica_sends_the_chat_to_the_other_class():
    p = placer()
    views = p.views([("short", "s1", stats("L40S_TP2", prefill_tokens=60_000, waiting=8)),
                     ("long", "l1", stats("H100_TP1"))], 100.0)
    assert p.place(views, 700, {"short", "long"}).pool == "long"


def test_admission_takes_the_placement_else_the_length_rule():
    pools = [PoolLimits("short", 40_960, 40_959, 10**9), PoolLimits("long", 40_960, 40_959, 10**9)]
    p = placer()
    views = p.views([("short", "s1", stats("L40S_TP2")), ("long", "l1", stats("H100_TP1"))], 100.0)
    seen = []

    def place(tokens, fitting):
        seen.append(tokens)
        return p.place(views, tokens, {f.name for f in fitting})

    common = dict(count_exact=lambda: 20_000, max_tokens=100, pools=pools, outstanding_tokens={}, cap=40_960,
                  policy=OverflowPolicy.CLAMP)
    predicted = admit(upper_bound=None, place=place, **common)
    assert (predicted.pool, predicted.choice.kind, seen) == ("long", PREDICTED, [20_000])
    assert predicted.choice.placement.chosen.replica_id == "l1"
    by_rule = admit(upper_bound=None, place=lambda tokens, fitting: None, **common)
    assert (by_rule.pool, by_rule.choice.kind) == ("short", "preferred")
    uncounted = admit(upper_bound=4_000, place=place, **{**common, "count_exact": lambda: 1 / 0})
    assert seen[-1] == 1_000  # the byte bound's estimate: the prompt was never counted
    assert uncounted.prompt_tokens is None


def test_the_pool_router_ranks_the_predicted_replicas_first_then_by_load():
    book = LoadBook()
    loads = [book.load("a", 10), book.load("b", 500), book.load("c", 0)]
    assert [l.replica_id for l in ranked(loads, first=["b"])] == ["b", "c", "a"]
    assert [l.replica_id for l in ranked(loads)] == ["c", "a", "b"]
    order = book.rank_and_book("r1", 100, loads, has_room=lambda rid: rid != "b", first=["b", "a"])
    assert [l.replica_id for l in order] == ["b", "a", "c"] and book.booked_on("r1") == "a"  # b is full


def test_the_correction_moves_toward_the_observed_ratio_and_stays_bounded():
    c = TTFTCorrection()
    assert c.factor("H100_TP1") == 1.0
    for _ in range(200):
        c.observe("H100_TP1", 0.1, 0.2)
    assert c.factor("H100_TP1") == pytest.approx(2.0, rel=0.01) and c.factor("L40S_TP2") == 1.0
    for _ in range(200):
        c.observe("H100_TP1", 0.1, 100.0)
    assert c.factor("H100_TP1") == pytest.approx(BOUNDS[1], rel=1e-3)
    c.observe("L40S_TP2", 0.001, 1.0)  # below the noise floor: ignored
    assert c.factor("L40S_TP2") == 1.0 and c.observations == {"H100_TP1": 400}


def test_the_placer_learns_its_classes_error_from_first_tokens():
    p = placer()
    views = p.views([("long", "l1", stats("H100_TP1"))], 100.0)
    placement = p.place(views, 4_000, {"long"})
    for _ in range(100):
        p.first_token(placement, "l1", 3 * placement.chosen.ttft_model_s)
    corrected = p.place(p.views([("long", "l1", stats("H100_TP1"))], 100.0), 4_000, {"long"}).chosen
    assert corrected.ttft_s == pytest.approx(3 * corrected.ttft_model_s, rel=0.05)


def test_likely_output_is_the_median_of_recent_answers():
    likely = LikelyOutput(prior=900, every=4)
    for tokens in (100, 5_000, 300, 200):
        likely.observe(tokens)
    assert likely.tokens == 250
    assert not math.isnan(likely.tokens)
