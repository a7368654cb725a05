"""How deep a client's JSON may nest. Pure.

Fields typed `Any` or `dict[str, Any]` (tool_choice, tools, response_format, a tool's input
schema, a tool_use block's input) carry the client's JSON as it came. Whatever walks them
recursively later fails on a body nested some hundreds of levels deep: Ray's pickling of the
replica's request (RecursionError: a 500), json.dumps of a tool's input, mistral-common's
models, the engine's own parsers. One bound at the edge, far above any real request (a tool's
JSON schema with ten levels of objects is about 25 deep in the body) and far below Python's
recursion limit (1000 frames, some already used when it is reached), keeps all of them safe.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64  # arrays and objects, the body itself counted as 1


def deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when `value` nests more than `limit` arrays / objects deep. Iterative (it must not
    overflow itself) and stops at the first container past the limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def too_deep_message(limit: int = MAX_DEPTH) -> str:
    return f"the JSON body nests arrays and objects more than {limit} levels deep"


def check_nesting(data: Any) -> Any:
    """A pydantic 'before' validator body: raise ValueError for a body nested too deep."""
    if deeper_than(data):
        raise ValueError(too_deep_message())
    return data
