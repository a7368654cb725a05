"""Strings a tokenizer can take. JSON's `\\ud800` escape decodes to a lone surrogate, a Python
string UTF-8 cannot encode: it must be refused as the client's error before anything encodes it."""

from __future__ import annotations

import json
from typing import Any


def lone_surrogate_path(value: Any) -> str | None:
    """The dotted path of the first string (key or value) that is not valid Unicode, or None.

    One C-speed encode of the whole value decides the common case; only a value that fails it is
    walked (iteratively: a body nested thousands deep must not overflow the stack)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    except (RecursionError, TypeError, ValueError):
        pass  # too deep for the encoder, or not JSON: walk it
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _encodes(item):
                return path or "(body)"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and not _encodes(key):
                    return where
                children.append((child, where))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{path}.{i}" if path else str(i)) for i, child in enumerate(item)]))
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_unicode(data: Any) -> Any:
    """A pydantic 'before' validator body: raise ValueError naming where the bad string is."""
    where = lone_surrogate_path(data)
    if where is not None:
        # The path may hold the bad string itself (a key): escape it, pydantic-core cannot take it.
        where = where.encode("utf-8", "backslashreplace").decode("utf-8")
        raise ValueError(f"'{where}' is not valid Unicode (a lone UTF-16 surrogate such as \\ud800); "
                         "send text as valid UTF-8")
    return data
