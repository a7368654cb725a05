"""common.prefix_keys: a request's prefix chain from its messages or prompt."""

import pytest

from router.admission import BOUND_BYTES_PER_TOKEN
from common import prefix_keys
from common.prefix_keys import MAX_CHAIN, TEXT_BLOCK_BYTES, chat_chain, fit, request_chain, text_chain

SYSTEM = {"role": "system", "content": "You are the support assistant of Acme. " * 200}
TURNS = [{"role": "user", "content": "My order did not arrive."},
         {"role": "assistant", "content": "I am sorry to hear that. " * 40},
         {"role": "user", "content": "It was order 1234."}]


def keys(chain):
    return [key for key, _ in chain]


def test_one_entry_per_message_cumulative_and_a_later_turn_extends_the_earlier_ones():
    first = chat_chain([SYSTEM, TURNS[0]])
    later = chat_chain([SYSTEM, *TURNS])
    assert len(first) == 2 and len(later) == 4
    assert later[:2] == first  # the later turn finds the replica that served the first by its keys
    tokens = [t for _, t in later]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    # Estimates: the bytes over the admission's bytes per token (plus a little per message).
    assert tokens[0] == pytest.approx(len(SYSTEM["content"]) / BOUND_BYTES_PER_TOKEN, rel=0.05)
    assert prefix_keys.BYTES_PER_TOKEN == BOUND_BYTES_PER_TOKEN


def test_a_key_names_everything_before_it():
    other_system = {"role": "system", "content": "You are a pirate."}
    assert chat_chain([other_system, TURNS[0]])[1][0] != chat_chain([SYSTEM, TURNS[0]])[1][0]
    as_user = [{"role": "user", "content": SYSTEM["content"]}]
    assert chat_chain(as_user)[0][0] != chat_chain([SYSTEM])[0][0]  # the role is part of the prefix
    parts = {"role": "user", "content": [{"type": "text", "text": "My order did not arrive."}]}
    assert chat_chain([SYSTEM, parts])[1][0] != chat_chain([SYSTEM, TURNS[0]])[1][0]
    assert chat_chain([SYSTEM, parts]) == chat_chain([SYSTEM, dict(parts)])  # deterministic


def test_tenants_share_keys_unless_salted():
    """vLLM shares identical prefixes across requests unless they carry a cache_salt; our replicas
    send none, so the router predicts sharing across tenants. A salt separates them."""
    assert chat_chain([SYSTEM, TURNS[0]]) == chat_chain([SYSTEM, TURNS[0]], salt=None)
    salted = chat_chain([SYSTEM, TURNS[0]], salt="tenant-a")
    assert keys(salted) != keys(chat_chain([SYSTEM, TURNS[0]]))
    assert keys(salted) != keys(chat_chain([SYSTEM, TURNS[0]], salt="tenant-b"))
    assert [t for _, t in salted] == [t for _, t in chat_chain([SYSTEM, TURNS[0]])]


def test_a_long_conversation_keeps_its_system_prompt_and_latest_turns():
    messages = [SYSTEM] + [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(99)]
    full = {key: tokens for key, tokens in zip(keys(chat_chain(messages[:MAX_CHAIN])), range(MAX_CHAIN))}
    chain = chat_chain(messages)
    assert len(chain) == MAX_CHAIN
    assert chain[0] == chat_chain([SYSTEM])[0]
    assert chain[-1][0] == chat_chain(messages)[-1][0] and chain[-2][0] == chat_chain(messages[:-1])[-1][0]
    assert chain[1][0] not in full  # the middle of the conversation is skipped, not hashed apart


def test_a_completion_prompt_is_chained_in_blocks():
    head = "x" * (3 * TEXT_BLOCK_BYTES)
    a, b = text_chain(head + "question one?"), text_chain(head + "question two, longer?")
    assert len(a) == 4 and a[:3] == b[:3] and a[3] != b[3]
    assert a[2][1] == 3 * TEXT_BLOCK_BYTES // BOUND_BYTES_PER_TOKEN
    assert text_chain("") == () and chat_chain([]) == ()
    assert request_chain("completion", None, head) == text_chain(head)
    assert request_chain("chat", [SYSTEM], None) == chat_chain([SYSTEM])


def test_fit_scales_the_estimates_to_the_prompts_count():
    chain = chat_chain([SYSTEM, *TURNS])
    exact = chain[-1][1] // 2
    fitted = fit(chain, exact)
    assert keys(fitted) == keys(chain) and fitted[-1][1] == exact
    assert all(b[1] > a[1] for a, b in zip(fitted, fitted[1:]))
    assert fit(chain, chain[-1][1]) == chain
    assert fit(chain, 2) == ((chain[0][0], 2),)  # rounding meets the prompt: cut, still within it
    assert fit((), 100) == ()
