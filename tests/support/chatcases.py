"""Tools and JSON schemas the chat-capability tests share (unit/ engine and parser tests, e2e/test_chat_capabilities.py),
with a checker for the JSON-schema subset those schemas use."""

from __future__ import annotations

import math

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]


def fn(calls):
    """(index, name, arguments) of each tool call, ids left out: they are random."""
    return [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls]


# --- JSON schema checking (the subset the schemas below use) -------------------------------------


def validate(value, schema: dict, root: dict | None = None) -> None:
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return validate(value, root["$defs"][name], root)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return validate(value, option, root)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{value!r} matches no anyOf option: {errors}")
    if "const" in schema:
        assert value == schema["const"], (value, schema)
    if "enum" in schema:
        assert value in schema["enum"], (value, schema)
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        checks = {
            "object": isinstance(value, dict),
            "array": isinstance(value, list),
            "string": isinstance(value, str),
            "boolean": isinstance(value, bool),
            "null": value is None,
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        }
        assert any(checks[k] for k in kinds), (value, schema)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, (key, value)
        for key, v in value.items():
            if key in props:
                validate(v, props[key], root)
            else:
                assert schema.get("additionalProperties", True) is not False or not props, (key, schema)
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0) and len(value) <= schema.get("maxItems", math.inf), value
        for item in value:
            validate(item, schema.get("items", {}), root)
    if isinstance(value, str):
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf), value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf), value


S = {"type": "string", "maxLength": 12}
SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
    },
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}},
        "required": ["tags"],
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "number", "minimum": -10, "maximum": 10},
                    "y": {"type": "number", "minimum": -10, "maximum": 10},
                },
                "required": ["x", "y"],
            }
        },
        "required": ["point"],
    },
    {
        "type": "object",
        "properties": {"city": S, "country": S, "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
        "required": ["city", "country"],
    },
    {
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 1000}},
        "required": ["answer"],
    },
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"sku": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["sku", "qty"],
                },
            }
        },
        "required": ["items"],
    },
    {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["active", "inactive"]},
            "note": {"anyOf": [S, {"type": "null"}]},
        },
        "required": ["status", "note"],
    },
    {
        "type": "object",
        "properties": {"kind": {"const": "event"}, "day": {"type": "integer", "minimum": 1, "maximum": 31}},
        "required": ["kind", "day"],
    },
    {
        "type": "object",
        "properties": {"user": {"$ref": "#/$defs/User"}},
        "required": ["user"],
        "$defs": {
            "User": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}, "admin": {"type": "boolean"}},
                "required": ["id", "admin"],
            }
        },
    },
    {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "number", "minimum": 0, "maximum": 1},
                "minItems": 2,
                "maxItems": 4,
            }
        },
        "required": ["scores"],
    },
    {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {"b": {"type": "object", "properties": {"c": {"type": "boolean"}}, "required": ["c"]}},
                "required": ["b"],
            }
        },
        "required": ["a"],
    },
    {
        "type": "object",
        "properties": {
            "title": S,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "sf"]}, "maxItems": 2},
        },
        "required": ["title", "year", "genres"],
    },
    {
        "type": "object",
        "properties": {"value": {"type": ["integer", "null"], "minimum": 0, "maximum": 50}},
        "required": ["value"],
    },
    {"type": "object", "properties": {"first": S, "last": S, "email": S}, "required": ["first", "last"]},
    {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "maxItems": 2,
                "items": {"type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}},
            }
        },
        "required": ["matrix"],
    },
    {
        "type": "object",
        "properties": {"temperature": {"type": "number", "minimum": -50, "maximum": 50}, "unit": {"enum": ["c", "f"]}},
        "required": ["temperature", "unit"],
    },
    {
        "type": "object",
        "properties": {
            "done": {"type": "boolean"},
            "count": {"type": "integer", "minimum": 0, "maximum": 10},
            "label": S,
        },
        "required": ["done", "count", "label"],
    },
    {
        "type": "object",
        "properties": {"choice": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "boolean"}]}},
        "required": ["choice"],
    },
]
