import os

# The local Ray head enables token auth; a driver reads the mode when Ray is imported, so set it
# before any test module imports ray (the token itself is the one the head wrote under ~/.ray).
os.environ.setdefault("RAY_AUTH_MODE", "token")

import pytest

from common.tokens import TekkenCounter
from tests.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.shared_cluster import (  # noqa: F401 (fixtures)
    auth, base_url, local_cluster, otlp_receiver, postgres_app, ray_driver)


@pytest.fixture(scope="session")
def counter() -> TekkenCounter:
    """One Tekken tokenizer for the whole run (loading takes ~3 s)."""
    return TekkenCounter()


def user_prompt_with_tokens(counter: TekkenCounter, target: int) -> list[dict]:
    """Chat messages whose exact prompt count is `target` tokens (checked, not assumed)."""
    overhead = counter.count_chat([{"role": "user", "content": "hello"}]) - 1
    messages = [{"role": "user", "content": "hello " * (target - overhead - 1) + "hello"}]
    got = counter.count_chat(messages)
    assert got == target, f"built {got} tokens, wanted {target}"
    return messages


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny random-weight model configs/cpu-vllm.yaml serves (built once, ~10 s)."""
    from pathlib import Path

    from deployments.tiny_model import build

    return build(str(Path(__file__).resolve().parents[1] / ".run" / "tiny-magistral"))
