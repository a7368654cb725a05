"""CallerWatch (deployments/caller_watch.py): which requests lost their ingress, and what they
generated, decided from probes and times passed in."""

from deployments.caller_watch import CallerWatch, Usage


def usage(key: str, at: float, completion: int = 7, finished: bool = True) -> Usage:
    return Usage(key, prompt_tokens=11, completion_tokens=completion, reasoning_tokens=2, finished=finished,
                 ended_at=at)


def test_a_dead_callers_running_requests_are_cancelled_and_their_ends_published():
    watch, cancelled = CallerWatch(), []
    watch.begin(1, "ingress-a", lambda: cancelled.append(1))
    watch.begin(2, "ingress-b", lambda: cancelled.append(2))
    watch.begin(3, "ingress-a", lambda: cancelled.append(3))
    assert watch.callers(100.0) == {"ingress-a", "ingress-b"}
    assert watch.caller_dead("ingress-a", 100.0) == 2
    assert cancelled == [1, 3]
    assert watch.callers(100.0) == {"ingress-b"}  # a dead caller is not probed again
    watch.end(1, usage("k1", 100.5, completion=4, finished=False))
    watch.end(2, usage("k2", 100.6))  # its caller lives: not an orphan
    watch.end(3, usage("k3", 100.7, completion=9, finished=False))
    assert [(o["request_key"], o["completion_tokens"], o["finished"]) for o in watch.orphans(101.0)] == [
        ("k1", 4, False), ("k3", 9, False)]


def test_requests_that_ended_just_before_their_caller_died_become_orphans_too():
    """The ingress may die between the replica's last event and its ledger write."""
    watch = CallerWatch(keep_ended_s=10.0)
    watch.begin(1, "ingress-a", lambda: None)
    watch.begin(2, "ingress-a", lambda: None)
    watch.end(1, usage("old", 100.0))
    watch.end(2, usage("recent", 108.0))
    assert watch.callers(111.0) == {"ingress-a"}  # the recent end still needs a probe
    watch.caller_dead("ingress-a", 111.0)  # "old" ended over 10 s before: its ingress settled it
    assert [o["request_key"] for o in watch.orphans(111.0)] == ["recent"]


def test_live_callers_publish_nothing_and_are_forgotten_once_their_requests_are_old():
    watch = CallerWatch(keep_ended_s=10.0)
    watch.begin(1, "ingress-a", lambda: None)
    watch.end(1, usage("k1", 100.0))
    assert watch.callers(105.0) == {"ingress-a"}
    assert watch.callers(111.0) == set()
    assert watch.orphans(111.0) == []


def test_orphans_expire_and_stay_bounded():
    watch = CallerWatch(keep_orphans_s=60.0, max_orphans=3)
    for i in range(5):
        watch.begin(i, "dead", lambda: None)
    watch.caller_dead("dead", 100.0)
    for i in range(5):
        watch.end(i, usage(f"k{i}", 100.0 + i))
    assert [o["request_key"] for o in watch.orphans(105.0)] == ["k2", "k3", "k4"]  # newest kept
    assert [o["request_key"] for o in watch.orphans(162.5)] == ["k3", "k4"]
    assert watch.orphans(200.0) == []


def test_unwatched_requests_are_ignored():
    watch = CallerWatch()
    watch.begin(1, "", lambda: None)  # no caller named (a test's direct handle call)
    watch.end(1, usage("k1", 1.0))
    watch.end(99, usage("never-begun", 1.0))
    assert watch.callers(1.0) == set() and watch.orphans(1.0) == []


def test_a_request_that_starts_after_its_caller_was_found_dead_is_cancelled_at_once():
    """It waited in the engine's queue while its ingress died."""
    watch, cancelled = CallerWatch(), []
    watch.begin(1, "ingress-a", lambda: cancelled.append(1))
    watch.caller_dead("ingress-a", 100.0)
    watch.begin(2, "ingress-a", lambda: cancelled.append(2))
    assert cancelled == [1, 2]
    watch.end(2, usage("late", 100.2, completion=0, finished=False))
    assert [o["request_key"] for o in watch.orphans(100.5)] == ["late"]
