"""What a request costs, in GPU-seconds of the GPU class that serves it: the currency of fair
share: router/routing/predict.py's `gpu_seconds`, the price the ranking uses: its prefill,
then each output token's share of a step at a reference batch, its decode and the attention over
its growing context. A request on a slower class costs more GPU-seconds, which is what it takes
from the fleet. Predicted at dispatch with the likely output; actual at finish with the real one.
"""

from __future__ import annotations

from router.routing.predict import gpu_seconds, idle_ttft_s

__all__ = ["gpu_seconds", "idle_ttft_s"]
