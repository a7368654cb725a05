"""Observed correction of predicted time to first token, per GPU class.

The engine model's constants are estimates (spec sheets, or a calibration on other hardware); its
predictions leave out what lies outside the engine (the replica's own queue, Serve's hops). Each
answered request tells how far off the model was on its replica's class: the correction is a
moving average of log(actual / predicted), so one outlier moves it little and a factor of two
either way counts the same. The factor is bounded: a mis-specified profile degrades gracefully,
and a run of odd measurements cannot make a class look free or unusable.
"""

from __future__ import annotations

import math

ALPHA = 0.05  # weight of one observation: ~20 answers to move most of the way
BOUNDS = (0.33, 3.0)  # the factor never leaves this range
MIN_PREDICTED_S = 0.005  # below this the model's figure is noise beside the hops around it


class TTFTCorrection:
    def __init__(self, alpha: float = ALPHA) -> None:
        self._alpha = alpha
        self._log: dict[str, float] = {}
        self.observations: dict[str, int] = {}

    def factor(self, profile: str) -> float:
        """Multiply the engine model's TTFT for this class by this (1.0 until it has answers)."""
        return math.exp(self._log.get(profile, 0.0))

    def observe(self, profile: str, predicted_s: float, actual_s: float) -> None:
        if predicted_s < MIN_PREDICTED_S or actual_s <= 0:
            return
        lo, hi = (math.log(b) for b in BOUNDS)
        error = min(hi, max(lo, math.log(actual_s / predicted_s)))
        previous = self._log.get(profile, 0.0)
        self._log[profile] = min(hi, max(lo, previous + self._alpha * (error - previous)))
        self.observations[profile] = self.observations.get(profile, 0) + 1
