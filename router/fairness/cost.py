"""What a request costs, in GPU-seconds of the GPU class that serves it: the currency of fair
share. The same arithmetic as router/routing/predict.py's price (`predict`: `gpu_s`): its prefill,
then each output token's share of a step at a reference batch, its decode and the attention over
its growing context. A request on a slower class costs more GPU-seconds, which is what it takes
from the fleet. Predicted at dispatch with the likely output; actual at finish with the real one.
"""

from __future__ import annotations

from common.engine_model import GPUProfile
from router.routing.predict import REFERENCE_BATCH


def gpu_seconds(profile: GPUProfile, prompt_tokens: int, output_tokens: int,
                reference_batch: int = REFERENCE_BATCH) -> float:
    """GPU-seconds of one request of `prompt_tokens` and `output_tokens` on `profile`."""
    out = max(1, output_tokens)
    return (profile.prefill_s_per_token * prompt_tokens
            + out * (profile.base_s / reference_batch + profile.decode_s_per_seq
                     + profile.attention_s_per_kv_token * (prompt_tokens + out / 2)))


def idle_ttft_s(profile: GPUProfile, prompt_tokens: int) -> float:
    """Time to first token on a free replica of `profile` (its prompt in chunks of the step
    budget, nothing else in the batch): the best a queued request can hope for once dispatched,
    which bounds how long it may wait and still meet its objective."""
    steps = -(-max(1, prompt_tokens) // profile.max_num_batched_tokens)
    return steps * profile.base_s + profile.prefill_s_per_token * prompt_tokens
