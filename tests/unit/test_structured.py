"""Structured outputs: `format` to grammar (mlxollama/engine/structured.py)."""

from __future__ import annotations

import pytest

from mlxollama.engine.structured import FormatError, closed_objects, format_grammar

from ..support.chatcases import SCHEMAS


def test_format_errors_and_closed_objects():
    with pytest.raises(FormatError):
        format_grammar({"type": "nonsense"})
    assert format_grammar(None) is None and format_grammar("") is None
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
        "$defs": {"X": {"type": "object", "properties": {}}},
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False and closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["X"]["additionalProperties"] is False
    assert closed_objects({"type": "object"}) == {"type": "object"}  # "json": any object


def test_twenty_schemas_compile_and_close():
    assert len(SCHEMAS) == 20
    for schema in SCHEMAS:
        assert format_grammar(schema)
