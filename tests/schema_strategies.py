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
