"""What a request costs, in GPU-seconds of the GPU class that serves it: the currency of fair
share: router/routing/predict.py's `gpu_seconds`, the price the ranking uses: its prefill,
then each output token's share of a step at a reference batch, its decode and the attention over
its growing context. A request on a slower class costs more GPU-seconds, which is what it takes
from the fleet. Predicted at dispatch with the likely output; actual at finish with the real one.
"""

from __future__ import annotations

from common.engine_model import GPUProfile
from router.routing.predict import gpu_seconds

__all__ = ["gpu_seconds", "idle_ttft_s"]


def idle_ttft_s(profile: GPUProfile, prompt_tokens: int) -> float:
    """Time to first token on a free replica of `profile` (its prompt in chunks of the step
    budget, nothing else in the batch): the best a queued request can hope for once dispatched,
    which bounds how long it may wait and still meet its objective."""
    steps = -(-max(1, prompt_tokens) // profile.max_num_batched_tokens)
    return steps * profile.base_s + profile.prefill_s_per_token * prompt_tokens
