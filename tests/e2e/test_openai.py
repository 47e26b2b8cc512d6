"""OpenAI-compatible endpoints on a live server: wire shapes with httpx, behaviour with the official SDK.

Protocol shapes use the tiny random model; tools, reasoning and response_format use the scripted
models (tests/scriptedmodel.py); the real SmolLM2 answers one question.
"""

from __future__ import annotations

import base64
import json
import re
import struct

import httpx
import openai
import pytest

from ..support.liveserver import LiveServer
from ..support.scriptedmodel import (
    FIM_MIDDLE,
    JSON_ANSWER,
    REPLY,
    THINKING,
    THOUGHTFUL_ANSWER,
    TOOL_ANSWER,
    WEATHER_ARGS,
    WEATHER_TOOL,
)

TINY = "tiny:latest"
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", max_retries=0)


def sse_events(resp) -> list:
    """`data:` payloads of an SSE body, checking the framing on the way."""
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.endswith("\n\n")
    out = []
    for block in resp.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def chat(http, **body):
    body.setdefault("model", TINY)
    body.setdefault("messages", [{"role": "user", "content": "Why is the sky blue?"}])
    return http.post("/v1/chat/completions", json=body)


def assert_openai_error(r, status, kind, message):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --- chat completions: shapes ----------------------------------------------------------------


def test_chat_completion_shape(http):
    r = chat(http, max_tokens=3)
    assert r.status_code == 200
    body = r.json()
    assert re.fullmatch(r"chatcmpl-\d{1,3}", body["id"])
    assert body["object"] == "chat.completion" and isinstance(body["created"], int)
    assert body["model"] == TINY and body["system_fingerprint"] == "fp_ollama"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert set(choice["message"]) == {"role", "content"}  # no reasoning / tool_calls keys when empty
    u = body["usage"]
    assert u["completion_tokens"] == 3 and u["prompt_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_chat_stream_layout_with_usage(http):
    r = chat(http, max_tokens=4, stream=True, stream_options={"include_usage": True})
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["system_fingerprint"] == "fp_ollama" for c in chunks)
    *content, finish, usage = chunks
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in content[1:])
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert "usage" not in finish


def test_stream_without_usage_ends_with_finish_then_done(http):
    events = sse_events(chat(http, max_tokens=2, stream=True))
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events[:-1])


def test_v1_defaults_to_non_streaming(http):
    r = chat(http, max_tokens=1)
    assert r.headers["content-type"].startswith("application/json") and r.json()["object"] == "chat.completion"


def test_sdk_stream_equals_non_stream_when_greedy(client):
    messages = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat.completions.create(model=TINY, messages=messages, **GREEDY)
    stream = client.chat.completions.create(model=TINY, messages=messages, stream=True, **GREEDY)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == full.choices[0].message.content and text


def test_temperature_defaults_to_one_over_the_modelfile(http):
    # tiny-sys sets temperature 0 in its Modelfile: /v1 overrides it with OpenAI's default of 1.0,
    # so the seed matters; with an explicit 0 it does not.
    def answer(**kw):
        body = chat(http, model="tiny-sys", max_tokens=12, **kw).json()
        return body["choices"][0]["message"]["content"]

    assert answer(seed=1) == answer(seed=1)
    assert answer(seed=1) != answer(seed=2)
    assert answer(seed=1, temperature=0) == answer(seed=2, temperature=0)


def test_stop_as_string_and_list(http):
    # A stop string from a greedy answer: a printable token early in it, so the cut comes before the limit.
    for prompt in ("Why is the sky blue?", "Tell me a story.", "Hello"):
        messages = [{"role": "user", "content": prompt}]
        body = chat(http, messages=messages, max_tokens=12, temperature=0, logprobs=True).json()
        full = body["choices"][0]["message"]["content"]
        tokens = [e["token"] for e in body["choices"][0]["logprobs"]["content"]]
        stop = next((t for t in tokens[1:8] if t.strip() and t.isascii() and t.isprintable()), None)
        if stop:
            break
    assert stop, "no printable token in the greedy answers"
    for value in (stop, [stop, 5]):  # non-strings in the list are dropped, as Ollama does
        r = chat(http, messages=messages, max_tokens=12, temperature=0, stop=value).json()
        assert r["choices"][0]["message"]["content"] == full[: full.index(stop)]
        assert r["choices"][0]["finish_reason"] == "stop"


def test_max_completion_tokens(http):
    body = chat(http, max_completion_tokens=2).json()
    assert body["usage"]["completion_tokens"] == 2 and body["choices"][0]["finish_reason"] == "length"


def test_logprobs_in_openai_shape(http, client):
    body = chat(http, max_tokens=3, logprobs=True, top_logprobs=2).json()
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == 3
    for e in entries:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"} and e["logprob"] <= 0
        assert len(e["top_logprobs"]) == 2 and set(e["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    stream = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=3, logprobs=True, stream=True
    )
    got = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(got) == 3 and all(e.top_logprobs == [] for e in got)
    assert "logprobs" not in chat(http, max_tokens=1).json()["choices"][0]


def test_content_parts_and_history(http):
    r = chat(
        http,
        max_tokens=2,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hi!", "reasoning": "greeting"},
            {"role": "User", "content": "Again"},
        ],
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


# --- chat completions: errors ----------------------------------------------------------------

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


@pytest.mark.parametrize(
    "body, status, kind, message",
    [
        ({"model": "nope"}, 404, "not_found_error", "model 'nope' not found"),
        ({"model": ""}, 400, "invalid_request_error", "model is required"),
        ({"messages": []}, 400, "invalid_request_error", "[] is too short - 'messages'"),
        (
            {"temperature": "hot"},
            400,
            "invalid_request_error",
            "json: cannot unmarshal string into Go struct field ChatCompletionRequest.temperature of type float64",
        ),
        (
            {"tools": [WEATHER_TOOL]},
            400,
            "invalid_request_error",
            "registry.ollama.ai/library/tiny:latest does not support tools",
        ),
        (
            {"tools": ["get_weather"]},
            400,
            "invalid_request_error",
            "json: cannot unmarshal string into Go struct field ChatCompletionRequest.tools of type api.Tool",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}]},
            400,
            "invalid_request_error",
            "registry.ollama.ai/library/tiny:latest does not support vision",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x.test/a.png"}]}]},
            400,
            "invalid_request_error",
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,AA=="}}],
                    }
                ]
            },
            400,
            "invalid_request_error",
            "invalid image input",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            400,
            "invalid_request_error",
            "invalid message format",
        ),
        (
            {"messages": [{"role": "user", "content": None}]},
            400,
            "invalid_request_error",
            "invalid message content type: <nil>",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    }
                ]
            },
            400,
            "invalid_request_error",
            "invalid tool call arguments",
        ),
        (
            {"reasoning_effort": "extreme"},
            400,
            "invalid_request_error",
            'invalid reasoning value: "extreme" (must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")',
        ),
        ({"reasoning_effort": "high"}, 400, "invalid_request_error", '"tiny:latest" does not support thinking'),
        ({"top_logprobs": 21}, 400, "invalid_request_error", "top_logprobs must be between 0 and 20"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}},
            500,
            "api_error",
            'invalid format: "5"; expected "json" or a valid JSON Schema object',
        ),
    ],
)
def test_chat_errors_use_openai_envelope(http, body, status, kind, message):
    assert_openai_error(chat(http, **body), status, kind, message)


def test_reasoning_none_is_accepted_by_any_model(http):
    assert chat(http, max_tokens=1, reasoning_effort="none").status_code == 200


def test_sdk_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="missing-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["message"] == "model 'missing-model' not found"
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL])


def test_malformed_body(http):
    r = http.post("/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# --- tools, reasoning, response_format (scripted models) -------------------------------------

WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tool_calls(server, client, scripted):
    r = client.chat.completions.create(
        model="scripted-tools", messages=WEATHER_Q, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str) and json.loads(call.function.arguments) == WEATHER_ARGS
    assert choice.message.content == ""


def test_tool_calls_streamed_whole(server, http, scripted):
    events = sse_events(chat(http, model="scripted-tools", messages=WEATHER_Q, tools=[WEATHER_TOOL], stream=True))
    calls = [tc for e in events[:-1] for tc in e["choices"][0]["delta"].get("tool_calls", []) if e["choices"]]
    (call,) = calls
    assert call["index"] == 0 and call["type"] == "function" and call["id"]
    assert json.loads(call["function"]["arguments"]) == WEATHER_ARGS
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}


def test_tool_result_round_trip(server, client, scripted):
    first = client.chat.completions.create(model="scripted-tools", messages=WEATHER_Q, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    history = WEATHER_Q + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 degrees"},  # name found by id
    ]
    r = client.chat.completions.create(model="scripted-tools", messages=history, tools=[WEATHER_TOOL])
    assert r.choices[0].message.content == TOOL_ANSWER and r.choices[0].finish_reason == "stop"
    assert not r.choices[0].message.tool_calls


def test_tools_model_without_a_call_stops(server, client, scripted):
    r = client.chat.completions.create(
        model="scripted-tools", messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL]
    )
    assert r.choices[0].message.content == REPLY and r.choices[0].finish_reason == "stop"


def test_reasoning_effort_maps_to_thinking(server, client, http, scripted):
    messages = [{"role": "user", "content": "Hello"}]
    r = client.chat.completions.create(model="scripted-think", messages=messages, reasoning_effort="high")
    msg = r.choices[0].message
    assert msg.content == THOUGHTFUL_ANSWER
    assert msg.model_extra["reasoning"].strip() == THINKING  # `reasoning`, not `reasoning_content`
    off = client.chat.completions.create(model="scripted-think", messages=messages, reasoning_effort="none")
    assert off.choices[0].message.content == THOUGHTFUL_ANSWER and "reasoning" not in off.choices[0].message.model_extra
    # `reasoning: {effort}` (the Responses-style object) wins over `reasoning_effort`, as in Ollama
    obj = client.chat.completions.create(
        model="scripted-think", messages=messages, reasoning_effort="high", extra_body={"reasoning": {"effort": "none"}}
    )
    assert "reasoning" not in obj.choices[0].message.model_extra
    events = sse_events(chat(http, model="scripted-think", messages=messages, stream=True))
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    reasoning = "".join(d.get("reasoning", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert reasoning.strip() == THINKING and content == THOUGHTFUL_ANSWER
    assert all(not (d.get("reasoning") and d.get("content")) for d in deltas)
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(not d.get("reasoning") for d in deltas[first_content:])


def test_response_format_json_schema(server, client, scripted):
    messages = [{"role": "user", "content": "Answer in JSON."}]
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }
    r = client.chat.completions.create(
        model="scripted-json",
        messages=messages,
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
    )
    assert r.choices[0].message.content == JSON_ANSWER
    # A schema the script does not fit: the answer is forced into it, so the format really applies.
    other = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = client.chat.completions.create(
        model="scripted-json",
        messages=messages,
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": other}},
    )
    assert isinstance(json.loads(r.choices[0].message.content)["n"], int)
    r = client.chat.completions.create(
        model="scripted-json", messages=messages, response_format={"type": "json_object"}
    )
    assert json.loads(r.choices[0].message.content) == json.loads(JSON_ANSWER)


# --- completions -----------------------------------------------------------------------------


def test_completion_shape_and_legacy_logprobs(client):
    r = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=3, logprobs=2)
    assert re.fullmatch(r"cmpl-\d{1,3}", r.id) and r.object == "text_completion" and r.system_fingerprint == "fp_ollama"
    (choice,) = r.choices
    assert choice.finish_reason == "length" and isinstance(choice.text, str)
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 3
    # a dict per token: alternatives that decode to the same text (partial UTF-8) share a key
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    assert r.usage.completion_tokens == 3


def test_completion_stream_with_usage(http):
    r = http.post(
        "/v1/completions",
        json={
            "model": TINY,
            "prompt": "Hi",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    *chunks, usage = events[:-1]
    assert all(c["object"] == "text_completion" and c["usage"]["total_tokens"] == 0 for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3


def test_completion_sdk_stream_matches(client):
    full = client.completions.create(model=TINY, prompt="The sky", temperature=0, max_tokens=6).choices[0].text
    stream = client.completions.create(model=TINY, prompt="The sky", temperature=0, max_tokens=6, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == full


def test_completion_errors(http):
    def post(**body):
        return http.post("/v1/completions", json={"model": TINY, "prompt": "x", **body})

    assert_openai_error(
        post(suffix="y"), 400, "invalid_request_error", "registry.ollama.ai/library/tiny:latest does not support insert"
    )
    assert_openai_error(
        post(prompt=["a", "b"]),
        400,
        "invalid_request_error",
        "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string",
    )
    assert_openai_error(post(stop=["a", 1]), 400, "invalid_request_error", "invalid type for 'stop' field: float64")
    assert_openai_error(post(model="nope"), 404, "not_found_error", "model 'nope' not found")


def test_completion_suffix_is_fill_in_the_middle(client, scripted):
    r = client.completions.create(model="scripted-fim", prompt="def add(a, b):\n", suffix="\nprint(add(1, 2))\n")
    assert r.choices[0].text == FIM_MIDDLE and r.choices[0].finish_reason == "stop"


def test_completion_empty_prompt_is_a_load(http):
    r = http.post("/v1/completions", json={"model": TINY, "prompt": ""}).json()
    assert r["choices"][0] == {"text": "", "index": 0, "finish_reason": "load"}


# --- embeddings ------------------------------------------------------------------------------


def test_embeddings_float_and_base64(client, http, minilm):
    texts = ["The cat sat on the mat.", "A quantum computer"]
    floats = client.embeddings.create(model=minilm, input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.model == minilm
    assert floats.usage.prompt_tokens > 0 and floats.usage.total_tokens == floats.usage.prompt_tokens
    raw = http.post("/v1/embeddings", json={"model": minilm, "input": texts, "encoding_format": "base64"}).json()
    for d, f in zip(raw["data"], floats.data):
        decoded = struct.unpack(f"<{len(f.embedding)}f", base64.b64decode(d["embedding"]))
        assert decoded == pytest.approx(f.embedding, abs=1e-6)
    native = http.post("/api/embed", json={"model": minilm, "input": texts}).json()["embeddings"]
    assert floats.data[0].embedding == pytest.approx(native[0], abs=1e-6)
    # The SDK asks for base64 by default and decodes it itself.
    sdk_default = client.embeddings.create(model=minilm, input=texts[0])
    assert sdk_default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_embeddings_dimensions_and_inputs(http, minilm):
    body = http.post("/v1/embeddings", json={"model": minilm, "input": "hello", "dimensions": 64}).json()
    vec = body["data"][0]["embedding"]
    assert len(vec) == 64 and sum(v * v for v in vec) == pytest.approx(1.0, abs=1e-4)
    assert len(http.post("/v1/embeddings", json={"model": minilm, "input": ""}).json()["data"]) == 1


@pytest.mark.parametrize(
    "body, status, kind, message",
    [
        ({"input": []}, 400, "invalid_request_error", "invalid input"),
        ({"input": None}, 400, "invalid_request_error", "invalid input"),
        ({"input": [[1, 2, 3]]}, 400, "invalid_request_error", "invalid input type"),
        (
            {"input": "x", "encoding_format": "int8"},
            400,
            "invalid_request_error",
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
        ({"input": "x", "model": "nope"}, 404, "not_found_error", 'model "nope" not found, try pulling it first'),
    ],
)
def test_embeddings_errors(http, body, status, kind, message):
    assert_openai_error(http.post("/v1/embeddings", json={"model": TINY, **body}), status, kind, message)


# --- models ----------------------------------------------------------------------------------


def test_models_list_and_retrieve(client, http):
    listed = {m.id: m for m in client.models.list().data}
    assert listed[TINY].object == "model" and listed[TINY].owned_by == "library"
    assert isinstance(listed[TINY].created, int) and listed[TINY].created > 0
    got = client.models.retrieve("tiny")
    assert got.id == "tiny" and got.owned_by == "library" and got.created == listed[TINY].created
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body == {
        "message": "model 'no-such-model:latest' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


def test_retrieve_names_with_slashes(http, client):
    for name, owner in (("someone/tiny-copy:v1", "someone"), ("hf.co/org/tiny-gguf:Q4", "org")):
        assert http.post("/api/copy", json={"source": TINY, "destination": name}).status_code == 200
        try:
            for path in (f"/v1/models/{name}", "/v1/models/" + name.replace("/", "%2F").replace(":", "%3A")):
                r = http.get(path)
                assert r.status_code == 200, r.text
                assert r.json()["id"] == name and r.json()["owned_by"] == owner
            assert client.models.retrieve(name).id == name
            assert name in [m["id"] for m in http.get("/v1/models").json()["data"]]
        finally:
            http.request("DELETE", "/api/delete", json={"model": name})


def test_models_trailing_slash(http):
    assert http.get("/v1/models/").json()["object"] == "list"
    assert http.get("/v1/models/tiny/").json()["id"] == "tiny"


def test_models_list_is_null_when_store_is_empty(tmp_path):
    srv = LiveServer(tmp_path / "models", tmp_path / "server.log")
    try:
        assert httpx.get(srv.url + "/v1/models").json() == {"object": "list", "data": None}
    finally:
        srv.stop()


# --- a real model ----------------------------------------------------------------------------


def test_smollm_answers(client, smollm):
    r = client.chat.completions.create(
        model=smollm,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=10,
    )
    assert "Paris" in r.choices[0].message.content
    assert r.usage.completion_tokens <= 10


# --- cancellation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot_server(models_dir, tmp_path_factory):
    srv = LiveServer(
        models_dir,
        tmp_path_factory.mktemp("logs-v1") / "server.log",
        env={"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_CONTEXT_LENGTH": str(1 << 20)},
    )
    yield srv
    srv.stop()


def test_abandoned_streams_stop_generating(one_slot_server):
    """A client leaving mid-stream frees the only slot: otherwise the next request would wait for a
    generation with a million-token window (all three SSE endpoints)."""
    url = one_slot_server.url
    say = [{"role": "user", "content": "Talk forever."}]
    endless = [
        ("/v1/chat/completions", {"model": "tiny-long", "stream": True, "messages": say}),
        ("/v1/completions", {"model": "tiny-long", "stream": True, "prompt": "Talk forever."}),
        ("/v1/messages", {"model": "tiny-long", "stream": True, "max_tokens": 1 << 19, "messages": say}),
    ]
    for path, body in endless:
        with httpx.stream("POST", url + path, json=body, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        quick = httpx.post(
            url + "/v1/chat/completions", json={"model": TINY, "max_tokens": 2, "messages": say}, timeout=60
        )
        assert quick.json()["usage"]["completion_tokens"] == 2, path


# --- bounds ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ctx64(http):
    r = http.post(
        "/api/create", json={"model": "tiny-ctx64", "from": TINY, "parameters": {"num_ctx": 64}, "stream": False}
    )
    assert r.status_code == 200, r.text
    return "tiny-ctx64:latest"


@pytest.mark.parametrize("max_tokens", [-1, -7])
def test_negative_max_tokens_ends_at_the_context_window(http, tiny_ctx64, max_tokens):
    """Ollama passes max_tokens through as num_predict, where a negative value means "until a
    stop"; with context shift (the default) Ollama bounds it at ten windows, never later."""
    r = chat(http, model=tiny_ctx64, max_tokens=max_tokens, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert 0 < body["usage"]["completion_tokens"]
    assert body["usage"]["completion_tokens"] == 10 * 64
    r = http.post(
        "/v1/completions",
        json={"model": tiny_ctx64, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 10 * 64
