import pytest

from deployments.reasoning_split import RawText, ThinkSplitter

TEXT = "<think>\nLet me think: 2+2.\n</think>\n\nThe answer is 4."


def split(chunks):
    s, reasoning, content = ThinkSplitter(), "", ""
    for chunk in chunks:
        r, c = s.feed(chunk)
        reasoning, content = reasoning + r, content + c
    r, c = s.finish()
    return reasoning + r, content + c


def test_whole_text():
    assert split([TEXT]) == ("Let me think: 2+2.\n", "The answer is 4.")


@pytest.mark.parametrize("cut", range(1, len(TEXT)))
def test_tags_cut_anywhere_split_the_same(cut):
    assert split([TEXT[:cut], TEXT[cut:]]) == ("Let me think: 2+2.\n", "The answer is 4.")


def test_one_char_at_a_time():
    assert split(list(TEXT)) == ("Let me think: 2+2.\n", "The answer is 4.")


def test_no_think_is_all_content():
    assert split(["Hello", " <think> is just text"]) == ("", "Hello <think> is just text")


def test_unfinished_thinking_stays_reasoning():
    assert split(["<think>still going </thi"]) == ("still going </thi", "")


def test_raw_text_keeps_tags_and_tracks_thinking():
    raw = RawText()
    assert raw.feed("<think>x") == ("", "<think>x") and raw.thinking
    assert raw.feed("</think>y") == ("", "</think>y") and not raw.thinking
