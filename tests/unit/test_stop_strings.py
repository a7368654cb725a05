import pytest

from deployments.stop_strings import StopMatcher


def run(stops, chunks):
    m = StopMatcher(stops)
    out = "".join(m.feed(c) for c in chunks) + m.finish()
    return out, m.stopped


def test_no_stop_passes_everything():
    assert run([], ["ab", "cd"]) == ("abcd", False)
    assert run(["zz"], ["ab", "cd"]) == ("abcd", False)


@pytest.mark.parametrize("cut", range(1, 11))
def test_stop_cut_across_chunks(cut):
    text = "hello STOP world"
    assert run(["STOP"], [text[:cut], text[cut:]]) == ("hello ", True)


def test_earliest_stop_wins_and_nothing_after():
    m = StopMatcher(["b", "a"])
    assert m.feed("xxab") == "xx" and m.stopped
    assert m.feed("more") == "" and m.finish() == ""
