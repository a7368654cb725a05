"""What the router's admission step costs per request, side by side in one run.

    .venv/bin/python bench/admission_cost.py

For prompts of several sizes: the byte-bound path (no tokenization, template validation only)
versus the exact Tekken count, both through router.admission.admit with the local pools.
"""

from __future__ import annotations

import statistics
import time

from router.admission import admit
from router.config import AppConfig
from router.context_cap import OverflowPolicy
from router.tokens import TekkenCounter, chat_upper_bound


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


def main() -> None:
    import yaml

    with open("configs/local.yaml") as f:
        config = AppConfig.from_args(yaml.safe_load(f)["applications"][0]["args"])
    pools, cap = config.pool_limits(), config.context_cap
    counter = TekkenCounter()
    print(f"{'prompt tokens':>13} {'bound decides':>13} {'bound path ms':>13} {'exact path ms':>13} {'ratio':>6}")
    for words in (20, 200, 1_500, 8_000, 20_000, 40_000):
        messages = [{"role": "user", "content": "word " * words}]
        tokens = counter.count_chat(messages)
        if tokens >= cap:
            messages = [{"role": "user", "content": "word " * (words - (tokens - cap) - 10)}]
            tokens = counter.count_chat(messages)

        def run(bound: int):
            def step():
                adm = admit(upper_bound=bound, count_exact=lambda: counter.count_chat(messages), max_tokens=256,
                            pools=pools, outstanding_tokens={}, cap=cap, policy=OverflowPolicy.CLAMP)
                if adm.prompt_tokens is None:
                    counter.validate_chat(messages)
            return step

        bound = chat_upper_bound(messages)
        fast, exact = timed(run(bound), 30), timed(run(10**9), 30)
        decides = admit(upper_bound=bound, count_exact=lambda: -1, max_tokens=256, pools=pools,
                        outstanding_tokens={}, cap=cap, policy=OverflowPolicy.CLAMP).prompt_tokens is None
        print(f"{tokens:>13} {str(decides):>13} {fast:>13.3f} {exact:>13.3f} {exact / fast:>6.1f}")


if __name__ == "__main__":
    main()
