"""Outstanding work keyed by pool or replica: what this process has sent and not seen finish."""

from __future__ import annotations

from collections import defaultdict


class InFlight:
    """Tokens and requests in flight per key. Not thread-safe: use from one event loop."""

    def __init__(self) -> None:
        self._by_request: dict[str, tuple[str, int]] = {}
        self._tokens: defaultdict[str, int] = defaultdict(int)
        self._requests: defaultdict[str, int] = defaultdict(int)

    def add(self, key: str, request_id: str, tokens: int) -> None:
        """Record a request; adding the same request again moves it (a re-route)."""
        self.remove(request_id)
        self._by_request[request_id] = (key, tokens)
        self._tokens[key] += tokens
        self._requests[key] += 1

    def remove(self, request_id: str) -> None:
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return
        key, tokens = entry
        self._tokens[key] -= tokens
        self._requests[key] -= 1

    def tokens(self, key: str) -> int:
        return self._tokens.get(key, 0)

    def requests(self, key: str) -> int:
        return self._requests.get(key, 0)

    def snapshot_tokens(self) -> dict[str, int]:
        return {k: v for k, v in self._tokens.items() if v}
