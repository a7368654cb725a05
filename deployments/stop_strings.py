"""Stop strings over a stream of text: emit what is safe, hold back a possible partial match."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that matched

    def feed(self, text: str) -> str:
        """Text that can be emitted now; after a stop string, nothing more (and `stopped`)."""
        if self.stopped:
            return ""
        self._pending += text
        hits = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            first, self.matched = min(hits)
            self.stopped = True
            out, self._pending = self._pending[:first], ""
            return out
        if self._hold == 0:
            out, self._pending = self._pending, ""
            return out
        cut = max(len(self._pending) - self._hold, 0)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def finish(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out
