"""router.fairness.admission_queue: the queue's decisions on their own (the simulator and the
ingress only adapt requests and placements to it)."""

from common.engine_model import L40S_TP2
from router.fairness.admission_queue import AdmissionQueue, Waiting
from router.fairness.shedding import Action
from router.fairness.tiers import Tier
from router.routing.placer import Placement
from router.routing.predict import ReplicaView, RequestShape, pick

SHAPE = RequestShape(prompt_tokens=1_000, likely_output_tokens=900, ttft_limit_s=1.1, tpot_limit_s=0.08)


def placement(**state) -> Placement:
    """One L40S replica's placement for a 1k-token chat; idle it meets the objectives."""
    order = pick([ReplicaView("r", "short", L40S_TP2, 5.2, 40_960, **state)], SHAPE)
    return Placement("short", ("r",), tuple(order), SHAPE.prompt_tokens, SHAPE.likely_output_tokens)


IDLE, BUSY = placement(), placement(running=60, kv_tokens=190_000, context_tokens=400_000)


def waiting(key: str, tenant: str, at: float = 0.0, tier: Tier = Tier.STANDARD) -> Waiting:
    return Waiting(key, tenant, tier, SHAPE.prompt_tokens, at, SHAPE.ttft_limit_s, 0.2, L40S_TP2, payload=key)


class Fleet:
    """A Placing whose replica is idle or busy as the test says; records what it placed."""

    def __init__(self, busy: bool) -> None:
        self.busy, self.unplaced = busy, []

    def place(self, payload):
        return BUSY if self.busy else IDLE

    def unplace(self, payload):
        self.unplaced.append(payload)


def test_a_request_that_meets_its_objectives_on_an_empty_queue_is_admitted_and_charged():
    q = AdmissionQueue()
    assert IDLE.chosen.meets and not BUSY.chosen.meets
    decision = q.arrive(waiting("a", "t"), IDLE, now=0.0)
    assert decision.action is Action.ADMIT and "a" in q.charges and q.charges["a"].predicted_gpu_s > 0


def test_held_requests_go_in_fair_order_once_a_replica_meets_them():
    q = AdmissionQueue()
    for i in range(3):  # the noisy tenant is served first and builds a counter
        assert q.arrive(waiting(f"n{i}", "noisy"), IDLE, now=0.0).action is Action.ADMIT
    for i in range(3, 6):
        assert q.arrive(waiting(f"n{i}", "noisy", at=1.0), BUSY, now=1.0).action is Action.QUEUE
    assert q.arrive(waiting("quiet", "quiet", at=1.1), BUSY, now=1.1).action is Action.QUEUE
    fleet, sent = Fleet(busy=True), []
    assert q.retry(1.2, fleet, lambda: True, lambda w, p: sent.append(w.key)) == 0
    assert len(fleet.unplaced) == 4 and len(q.queue) == 4  # no replica meets them: all still held
    fleet.busy = False
    q.retry(1.3, fleet, lambda: len(sent) < 3, lambda w, p: sent.append(w.key))
    # The quiet tenant, lifted to the noisy one's counter on arrival (no credit for the noisy
    # tenant's time alone), goes second, not behind the whole noisy backlog.
    assert sent == ["n3", "quiet", "n4"]


def test_a_request_whose_wait_exceeds_its_bound_is_shed_with_retry_after():
    q = AdmissionQueue()
    for i in range(10):  # dispatches: the rate the queue's wait is estimated at
        q.arrive(waiting(f"a{i}", "t"), IDLE, now=0.0)
    decisions = [q.arrive(waiting(f"h{i}", "hog", at=0.5), BUSY, now=0.5) for i in range(20)]
    alone = next(d for d in decisions if d.action is Action.SHED)
    assert alone.status == 503 and alone.retry_after_s >= 1  # one tenant filling the queue: the fleet is full
    held = len(q.queue)
    # Another tenant is not behind the hog's backlog: it is held, to go next.
    assert q.arrive(waiting("quiet", "other", at=0.6), BUSY, now=0.6).action is Action.QUEUE
    hog = q.arrive(waiting("more", "hog", at=0.6), BUSY, now=0.6)
    assert hog.action is Action.SHED and hog.status == 429  # now the hog is over its share: back off
    assert len(q.queue) == held + 1  # shed requests are not held


def test_held_requests_are_shed_when_their_bounded_wait_ends_and_a_left_one_is_charged_nothing():
    q = AdmissionQueue()
    assert q.arrive(waiting("a", "t"), BUSY, now=0.0).action is Action.QUEUE
    assert q.arrive(waiting("b", "u"), BUSY, now=0.0).action is Action.QUEUE
    assert q.remove("b") and not q.remove("b")
    assert q.expire(0.5) == []  # a chat may wait ~0.9 s (objective 1.1 s, idle TTFT 0.2 s)
    [(w, decision)] = q.expire(1.0)
    assert w.key == "a" and decision.action is Action.SHED and decision.status in (429, 503)
    assert len(q.queue) == 0 and q.charges == {} and q.queue.counter("u", Tier.STANDARD) == 0.0


def test_finishing_corrects_the_charge_to_the_actual_cost():
    q = AdmissionQueue()
    q.arrive(waiting("a", "t"), IDLE, now=0.0)
    predicted = q.charges["a"].predicted_gpu_s
    before = q.queue.counter("t", Tier.STANDARD)
    q.finished("a", predicted * 3)
    assert "a" not in q.charges
    assert abs(q.queue.counter("t", Tier.STANDARD) - (before + 2 * predicted)) < 1e-9


def test_a_request_with_an_output_cap_is_never_priced_past_it():
    q = AdmissionQueue(likely_output=lambda: 900)
    q.arrive(waiting("free", "t"), IDLE, now=0.0)
    capped = Waiting("capped", "t", Tier.STANDARD, SHAPE.prompt_tokens, 0.0, SHAPE.ttft_limit_s, 0.2, L40S_TP2,
                     payload="capped", max_tokens=8)
    q.arrive(capped, IDLE, now=0.0)
    assert q.charges["capped"].predicted_gpu_s < q.charges["free"].predicted_gpu_s / 5
    assert q.charges["capped"].predicted_gpu_s > 0
