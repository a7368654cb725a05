"""Hypothesis strategies from the JSON Schemas of an OpenAPI document (the subset pydantic emits:
type, properties / required, items, anyOf, enum / const, bounds). hypothesis-jsonschema 0.23.1
does not run on the hypothesis this project pins, and our schemas need little.

`from_schema` draws values that mostly follow the schema, and now and then (1 in CHAOS at each
node) any JSON at all, so the fuzzer also crosses the validation boundary at every depth.
"""

from __future__ import annotations

from hypothesis import strategies as st

# Any text, and now and then with a lone UTF-16 surrogate in it (hypothesis draws none by itself).
LONE_SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
_PLAIN = st.text(max_size=30)
_BROKEN = st.builds(lambda a, s, b: a + s + b, st.text(max_size=10), LONE_SURROGATES, st.text(max_size=10))
ANY_TEXT = st.integers(0, 19).flatmap(lambda i: _BROKEN if i == 0 else _PLAIN)  # 1 string in 20
CHAOS = 30  # one node in this many is any JSON instead of what the schema says
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=8,
)


def resolved(schema, components: dict):
    """The schema with every #/components/schemas/X reference inlined (no cycles in ours)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return resolved(components[schema["$ref"].rsplit("/", 1)[1]], components)
        return {k: resolved(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolved(v, components) for v in schema]
    return schema


def _typed(schema: dict, fields: dict) -> st.SearchStrategy:
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(s, fields) for s in schema.get("anyOf") or schema["oneOf"]])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        def prop(k: str, v: dict) -> st.SearchStrategy:
            return fields[k] if k in fields else from_schema(v, fields)

        return st.fixed_dictionaries(
            {k: prop(k, v) for k, v in props.items() if k in required},
            optional={k: prop(k, v) for k, v in props.items() if k not in required},
        )
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), fields), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 4), 4))
    if kind == "string":
        return ANY_TEXT
    if kind == "integer":  # in bounds: out-of-bounds numbers come from the chaos nodes
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**63)) + ("exclusiveMinimum" in schema))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 2**63) - ("exclusiveMaximum" in schema))
        return st.integers(min_value=low, max_value=high)
    if kind == "number":
        return st.floats(min_value=schema.get("minimum", schema.get("exclusiveMinimum")),
                         max_value=schema.get("maximum", schema.get("exclusiveMaximum")),
                         exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema,
                         allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return ANY_JSON  # no constraint: any JSON value


def from_schema(schema: dict, fields: dict[str, st.SearchStrategy] | None = None) -> st.SearchStrategy:
    """fields: strategies for properties of a given name at any depth (e.g. `model` drawn mostly
    from the served ids, or every body would stop at the 404 for an unknown model)."""
    fields = fields or {}
    if not schema:
        return ANY_JSON
    typed = _typed(schema, fields)
    return st.integers(0, CHAOS - 1).flatmap(lambda i: ANY_JSON if i == 0 else typed)


# ---- hostile shapes no schema describes: deep nesting, header bytes Serve's proxy reads --------------

DEEP = "__deep__"  # a placeholder string in a body template: where the deep value goes


def deep_json_text(depth: int, seed: int, leaf: str) -> str:
    """JSON text `depth` arrays / objects deep, the kind of each level drawn from `seed`: text,
    because json.dumps itself recurses and stops near 1000 levels."""
    import random

    kinds = [random.Random(seed + i).random() < 0.5 for i in range(depth)]  # True: an object
    return ("".join('{"k":' if k else "[" for k in kinds) + leaf
            + "".join("}" if k else "]" for k in reversed(kinds)))


def deep_values(limit: int) -> st.SearchStrategy[str]:
    """Depths around the edge's bound `limit`, where recursion used to fail (~760-1000: Ray's
    pickling, json.dumps; ~1000: the JSON parser) and far past it."""
    depths = st.sampled_from([1, limit - 2, limit - 1, limit, limit + 1, 200, 760, 970, 1_000, 1_500, 5_000])
    leaves = st.sampled_from(['"x"', "1", "null", "[]", "{}", '"\\ud800"'])
    return st.builds(deep_json_text, depths, st.integers(0, 2**31), leaves)


def with_deep(template, deep_text: str) -> bytes:
    """A body template (JSON-able, one DEEP placeholder) with the deep JSON text in its place."""
    import json

    return json.dumps(template).replace(json.dumps(DEEP), deep_text, 1).encode()


# Headers Serve's proxy reads itself, in the spellings it matches ('-' and '_' alike, any case),
# and a few it does not; values with bytes that are not UTF-8. Only bytes an HTTP/1.1 client may
# send in a field value (h11's rule: no control characters but tab, no edge whitespace).
SERVE_READ_HEADERS = st.sampled_from([
    b"x-request-id", b"x-session-id", b"X-Session-Id", b"x_session_id", b"serve_multiplexed_model_id",
    b"serve-multiplexed-model-id", b"x-request-timeout-seconds", b"x-request-disconnect-disabled",
    b"traceparent", b"tracestate", b"x-serve-router-replica", b"user-agent", b"x-anything"])
_FIELD_BYTES = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c <= 0x7E or c >= 0x80).strip(b" \t"))
HEADER_VALUES = st.one_of(
    st.sampled_from([b"\xff", b"ab\xffcd", b"caf\xc3\xa9", b"0.001", b"0", b"?1", b"", b"x" * 300,
                     b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]),
    _FIELD_BYTES)
HEADERS = st.lists(st.tuples(SERVE_READ_HEADERS, HEADER_VALUES), min_size=1, max_size=3)
