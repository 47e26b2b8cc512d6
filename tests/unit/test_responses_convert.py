"""Responses API conversion as plain functions (mlxollama/api/responses_convert.py): Ollama's
merging rules for input items, tool flattening, option overrides and the event builder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from mlxollama.api import responses_convert
from mlxollama.api.errors import APIError
from mlxollama.api.responses_convert import ResponseBuilder, convert_input, convert_tools, responses_request


def roles(messages):
    return [(m.role, m.content) for m in messages]


def test_string_input_and_instructions():
    req = responses_request({"model": "m", "input": "hi", "instructions": "Be brief."})
    assert roles(req.native.messages) == [("system", "Be brief."), ("user", "hi")]
    assert req.native.stream is False and req.native.format is None and req.native.think is None
    assert req.overrides == {"temperature": 1.0}  # top_p is left to the model, as in Ollama


def test_sampling_overrides_and_echo():
    req = responses_request(
        {
            "model": "m",
            "input": "hi",
            "temperature": 0,
            "top_p": 0.5,
            "max_output_tokens": 7,
            "reasoning": {"effort": "minimal", "summary": "auto"},
            "truncation": "auto",
        }
    )
    assert req.overrides == {"temperature": 0.0, "top_p": 0.5, "num_predict": 7}
    assert req.native.think == "low" and req.reasoning == {"effort": "minimal", "summary": "auto"}
    assert req.truncation == "auto" and req.max_output_tokens == 7


def test_text_format_json_schema_becomes_format():
    schema = {"type": "object"}
    req = responses_request(
        {
            "model": "m",
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}},
        }
    )
    assert req.native.format == schema
    assert req.text_format == {"type": "json_schema", "name": "x", "schema": schema, "strict": True}


def test_function_call_items_join_the_assistant_turn():
    messages = convert_input(
        [
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "summary": [], "encrypted_content": "thinking it over"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": ""},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
        ]
    )
    assert roles(messages) == [("user", "weather?"), ("assistant", "Let me look."), ("tool", "sunny"), ("tool", "noon")]
    assistant = messages[1]
    assert assistant.thinking == "thinking it over"
    assert [c["function"] for c in assistant.tool_calls] == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": {}},
    ]
    assert [(m.tool_call_id, m.tool_name) for m in messages[2:]] == [("c1", "get_weather"), ("c2", "get_time")]


def test_assistant_message_between_call_and_output_folds_into_the_call():
    messages = convert_input(
        [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"role": "assistant", "content": "running f"},
            {"type": "function_call_output", "call_id": "c1", "output": "done"},
        ]
    )
    assert roles(messages) == [("assistant", "running f"), ("tool", "done")]
    assert messages[0].tool_calls[0]["id"] == "c1"


def test_trailing_reasoning_is_its_own_turn():
    assert [
        (m.role, m.thinking)
        for m in convert_input([{"role": "user", "content": "x"}, {"type": "reasoning", "encrypted_content": "hmm"}])
    ] == [("user", ""), ("assistant", "hmm")]


@pytest.mark.parametrize(
    "raw,message",
    [
        ([{"type": "bogus"}], 'input[0]: unknown input item type: "bogus"'),
        ([{"content": "x"}], "input[0]: input item missing required 'type' field"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "input[0]: content[0]: unknown content type: audio"),
        (
            [{"role": "user", "content": [{"type": "input_file", "file_data": "x"}]}],
            "file inputs are not currently supported",
        ),
        ([{"type": "function_call", "name": "f", "arguments": "{"}], "failed to parse function call arguments"),
        (3, "input must be a string or array"),
    ],
)
def test_input_errors(raw, message):
    with pytest.raises(APIError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        convert_input(raw)
    assert e.value.status == 400


def test_tools_flatten_namespaces_and_leave_out_web_search():
    fn = {"type": "function", "name": "close", "description": "Close", "parameters": {"type": "object"}}
    tools = convert_tools(
        [
            fn,
            {"type": "namespace", "name": "agents", "tools": [fn]},
            {"type": "web_search"},
            {"type": "custom", "name": "apply_patch"},
        ]
    )
    assert [t["function"]["name"] for t in tools] == ["close", "agents.close", "apply_patch"]
    assert tools[0] == {
        "type": "function",
        "function": {"name": "close", "description": "Close", "parameters": {"type": "object"}},
    }


def test_builder_whole_with_calls_has_no_message_item():
    b = ResponseBuilder(responses_request({"model": "m", "input": "hi"}), "m")
    out = b.whole("ignored", "why", [{"function": {"name": "f", "arguments": {"a": 1}}}], 5, 2)
    assert [o["type"] for o in out["output"]] == ["reasoning", "function_call"]
    call = out["output"][1]
    assert call["call_id"].startswith("call_") and json.loads(call["arguments"]) == {"a": 1}
    assert out["usage"]["total_tokens"] == 7 and out["status"] == "completed"


def test_builder_stream_drops_text_after_a_call_and_numbers_events():
    b = ResponseBuilder(responses_request({"model": "m", "input": "hi"}), "m")
    events = b.start() + b.feed("", "", [{"id": "c", "function": {"name": "f", "arguments": {}}}])
    events += b.feed("", "late text", []) + b.finish(3, 1)
    names = [n for n, _ in events]
    assert "response.output_text.delta" not in names
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert events[-1][1]["response"]["output"][0]["call_id"] == "c"


def test_builder_failed_event_carries_the_error():
    b = ResponseBuilder(responses_request({"model": "m", "input": "hi"}), "m")
    ((name, data),) = b.failed(500, "boom")
    assert name == "response.failed" and data["response"]["error"] == {"code": "server_error", "message": "boom"}


def test_conversion_module_holds_no_http_code():
    tree = ast.parse(Path(responses_convert.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] == "sanic"}


def test_namespace_members_must_be_a_list():
    with pytest.raises(APIError, match=r"cannot unmarshal bool into Go struct field ResponsesTool.tools.tools"):
        convert_tools([{"type": "namespace", "name": "n", "tools": True}])
