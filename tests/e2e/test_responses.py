"""POST /v1/responses on a live server with the official `openai` SDK, plus the Anthropic SDK's
messages.count_tokens (the other endpoint a coding agent calls that chat clients do not).

Tools, reasoning and text.format use the scripted models (tests/support/scriptedmodel.py), whose
answers are fixed scripts: each assertion names the exact answer.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from ..support.scriptedmodel import (
    JSON_ANSWER,
    REPLY,
    THINKING,
    THOUGHTFUL_ANSWER,
    TOOL_ANSWER,
    WEATHER_ARGS,
    WEATHER_TOOL,
)

# The Responses API declares tools flat: name, description and parameters at the top.
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": WEATHER_TOOL["function"]["description"],
    "parameters": WEATHER_TOOL["function"]["parameters"],
}
WEATHER_Q = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", max_retries=0)


def sse(resp) -> list[tuple[str, dict]]:
    """(event name, data) pairs of a Responses stream, checking the framing on the way."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    out = []
    for block in resp.text.split("\n\n")[:-1]:
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == name[len("event: ") :]
        out.append((payload["type"], payload))
    assert [p["sequence_number"] for _, p in out] == list(range(len(out)))
    return out


# --- text ------------------------------------------------------------------------------------


def test_text_response_object(client, scripted):
    r = client.responses.create(model="scripted-tools", input="Hi", instructions="Be brief.")
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.model == "scripted-tools" and r.instructions == "Be brief."
    assert r.output_text == REPLY
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.content[0].type == "output_text" and item.content[0].text == REPLY
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.temperature == 1.0 and r.tool_choice == "auto" and r.store is False and r.completed_at


def test_input_items_and_message_shorthand(client, scripted):
    r = client.responses.create(
        model="scripted-tools",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
    )
    assert r.output_text == REPLY


def test_stream_event_sequence(http, scripted):
    events = sse(http.post("/v1/responses", json={"model": "scripted-tools", "input": "Hi", "stream": True}))
    names = [n for n, _ in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(names[4:-4]) == {"response.output_text.delta"}
    data = dict(events)
    item_id = data["response.output_item.added"]["item"]["id"]
    assert "".join(p["delta"] for n, p in events if n == "response.output_text.delta") == REPLY
    assert (
        data["response.output_text.done"]["text"] == REPLY and data["response.output_text.done"]["item_id"] == item_id
    )
    done = data["response.completed"]["response"]
    assert done["status"] == "completed" and done["id"] == data["response.created"]["response"]["id"]
    assert done["output"] == [data["response.output_item.done"]["item"]]
    assert done["usage"]["output_tokens"] > 0


def test_sdk_stream_matches_non_stream(client, scripted):
    with client.responses.stream(model="scripted-tools", input="Hi") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == REPLY


def test_max_output_tokens_and_sampling_fields(client):
    r = client.responses.create(
        model="tiny", input="Why is the sky blue?", max_output_tokens=3, temperature=0, top_p=0.5
    )
    assert r.usage.output_tokens == 3 and r.max_output_tokens == 3
    assert r.temperature == 0 and r.top_p == 0.5


# --- tools -----------------------------------------------------------------------------------


def test_function_call_round_trip(server, client, scripted):
    first = client.responses.create(model="scripted-tools", input=WEATHER_Q, tools=[WEATHER], tool_choice="auto")
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments) == WEATHER_ARGS
    assert first.tools[0].name == "get_weather"
    # Stateless: the client sends the call and its output back as input items.
    second = client.responses.create(
        model="scripted-tools",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": WEATHER_Q},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 degrees"},
        ],
    )
    assert second.output_text == TOOL_ANSWER and second.output[0].type == "message"


def test_function_call_streamed(server, http, scripted):
    events = sse(
        http.post(
            "/v1/responses", json={"model": "scripted-tools", "input": WEATHER_Q, "tools": [WEATHER], "stream": True}
        )
    )
    names = [n for n, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    data = dict(events)
    added = data["response.output_item.added"]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress" and added["arguments"] == ""
    assert json.loads(data["response.function_call_arguments.done"]["arguments"]) == WEATHER_ARGS
    item = data["response.output_item.done"]["item"]
    assert item["call_id"] == added["call_id"] and item["name"] == "get_weather"
    assert data["response.completed"]["response"]["output"] == [item]


def test_namespace_tools_are_flattened(server, client, scripted):
    r = client.responses.create(
        model="scripted-tools",
        input=WEATHER_Q,
        tools=[{"type": "namespace", "name": "weather", "tools": [{**WEATHER, "name": "get_weather"}]}],
    )
    # The scripted model calls `get_weather`; the declared tool is `weather.get_weather`, which the
    # template lists. The call is still parsed (models may omit the namespace).
    assert r.output[0].type == "function_call"


# --- reasoning and text.format -----------------------------------------------------------------


def test_reasoning_effort_maps_to_think(server, client, http, scripted):
    r = client.responses.create(model="scripted-think", input="Hello", reasoning={"effort": "high"})
    reasoning, message = r.output
    assert message.type == "message" and reasoning.type == "reasoning" and reasoning.summary[0].text.strip() == THINKING
    assert r.output_text == THOUGHTFUL_ANSWER and r.reasoning.effort == "high"
    off = client.responses.create(model="scripted-think", input="Hello", reasoning={"effort": "none"})
    assert [o.type for o in off.output] == ["message"] and off.output_text == THOUGHTFUL_ANSWER
    events = sse(http.post("/v1/responses", json={"model": "scripted-think", "input": "Hello", "stream": True}))
    names = [n for n, _ in events]
    assert names.index("response.reasoning_summary_text.done") < names.index("response.output_text.delta")
    deltas = "".join(p["delta"] for n, p in events if n == "response.reasoning_summary_text.delta")
    assert deltas.strip() == THINKING
    final = dict(events)["response.completed"]["response"]["output"]
    assert [o["type"] for o in final] == ["reasoning", "message"]
    # The reasoning item goes back as input and the conversation continues.
    again = client.responses.create(
        model="scripted-think",
        input=[
            {"role": "user", "content": "Hello"},
            final[0],
            {"role": "assistant", "content": [{"type": "output_text", "text": THOUGHTFUL_ANSWER}]},
            {"role": "user", "content": "Hello again"},
        ],
        reasoning={"effort": "none"},
    )
    assert again.output_text == THOUGHTFUL_ANSWER


def test_text_format_json_schema(server, client, scripted):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }
    r = client.responses.create(
        model="scripted-json",
        input="Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "reply", "schema": schema}},
    )
    assert r.output_text == JSON_ANSWER and r.text.format.type == "json_schema"
    # A schema the script does not fit: the answer is forced into it, so the format really applies.
    other = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = client.responses.create(
        model="scripted-json",
        input="Answer in JSON.",
        temperature=0,
        max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "n", "schema": other}},
    )
    assert isinstance(json.loads(r.output_text)["n"], int)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,status,kind,message",
    [
        ({"input": "hi"}, 400, "invalid_request_error", "model is required"),
        ({"model": "nope", "input": "hi"}, 404, "not_found_error", "model 'nope' not found"),
        (
            {"model": "tiny", "input": [{"type": "bogus"}]},
            400,
            "invalid_request_error",
            'input[0]: unknown input item type: "bogus"',
        ),
        (
            {"model": "tiny", "input": [{"content": "x"}]},
            400,
            "invalid_request_error",
            "input[0]: input item missing required 'type' field",
        ),
        (
            {"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            400,
            "invalid_request_error",
            "file inputs are not currently supported",
        ),
        (
            {"model": "tiny", "input": "hi", "reasoning": {"effort": "huge"}},
            400,
            "invalid_request_error",
            'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")',
        ),
        (
            {"model": "tiny", "input": 5},
            400,
            "invalid_request_error",
            "input must be a string or array: json: cannot unmarshal number into Go value of type []json.RawMessage",
        ),
        (
            {"model": "tiny", "input": "hi", "tools": [WEATHER]},
            400,
            "invalid_request_error",
            "registry.ollama.ai/library/tiny:latest does not support tools",
        ),
    ],
)
def test_errors_use_openai_envelope(http, body, status, kind, message):
    r = http.post("/v1/responses", json=body)
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"message": message, "type": kind, "param": None, "code": None}}


def test_sdk_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError, match="model 'missing' not found"):
        client.responses.create(model="missing", input="hi")


def test_empty_input_loads_the_model(client):
    r = client.responses.create(model="tiny", input=[])
    assert r.status == "completed" and r.output_text == ""


# --- Anthropic count_tokens --------------------------------------------------------------------


def test_anthropic_count_tokens(server, scripted):
    client = anthropic.Anthropic(base_url=server.url, api_key="ollama", max_retries=0)
    small = client.messages.count_tokens(model="scripted-tools", messages=[{"role": "user", "content": "Hi"}])
    big = client.messages.count_tokens(
        model="scripted-tools",
        system=[{"type": "text", "text": "You are helpful.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hi " * 400}],
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": WEATHER["parameters"]}],
    )
    assert small.input_tokens >= 1 and big.input_tokens > small.input_tokens + 200
    with pytest.raises(anthropic.NotFoundError, match="model 'missing' not found"):
        client.messages.count_tokens(model="missing", messages=[{"role": "user", "content": "Hi"}])


def test_anthropic_ignores_claude_code_fields(server, scripted):
    client = anthropic.Anthropic(base_url=server.url, api_key="ollama", max_retries=0)
    r = client.messages.create(
        model="scripted-tools",
        max_tokens=32,
        metadata={"user_id": "u"},
        service_tier="auto",
        tool_choice={"type": "auto"},
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}
        ],
    )
    assert r.content[0].text == REPLY


# --- engine failures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty(models_dir, tmp_path_factory):
    from ..support.liveserver import LiveServer

    srv = LiveServer(models_dir, tmp_path_factory.mktemp("faulty") / "server.log", env={"MLXOLLAMA_TEST_FAULT": "1"})
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c
    srv.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_engine_failure_is_an_openai_error_without_internals(faulty, stream):
    r = faulty.post(
        "/v1/responses",
        json={
            "model": "tiny",
            "input": "please mlxollama-test-fault:oom now",
            "max_output_tokens": 3,
            "stream": stream,
        },
    )
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["type"] == "api_error" and error["message"].startswith("generation failed: out of memory")
    assert "Traceback" not in error["message"] and "/" not in error["message"]
    ok = faulty.post("/v1/responses", json={"model": "tiny", "input": "still here?", "max_output_tokens": 2})
    assert ok.status_code == 200 and ok.json()["status"] == "completed"
