"""Strings a tokenizer can take. JSON's `\\ud800` escape decodes to a lone surrogate, a Python
string UTF-8 cannot encode: it must be refused as the client's error before anything encodes it."""

from __future__ import annotations

from typing import Any


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) that is not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(body)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and lone_surrogate_path(key) is not None:
                return where
            found = lone_surrogate_path(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate_path(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


def check_unicode(data: Any) -> Any:
    """A pydantic 'before' validator body: raise ValueError naming where the bad string is."""
    where = lone_surrogate_path(data)
    if where is not None:
        # The path may hold the bad string itself (a key): escape it, pydantic-core cannot take it.
        where = where.encode("utf-8", "backslashreplace").decode("utf-8")
        raise ValueError(f"'{where}' is not valid Unicode (a lone UTF-16 surrogate such as \\ud800); "
                         "send text as valid UTF-8")
    return data
