"""Anthropic Messages API (/v1/messages) on a live server: wire events with httpx, behaviour with the
official `anthropic` SDK. Tools and thinking use the scripted models of tests/scriptedmodel.py."""

from __future__ import annotations

import json
import re

import anthropic
import httpx
import pytest

from ..support.scriptedmodel import (
    REPLY,
    THINKING,
    THOUGHTFUL_ANSWER,
    TOOL_ANSWER,
    WEATHER_ARGS,
    WEATHER_TOOL,
)

TINY = "tiny:latest"
WEATHER = {
    "name": "get_weather",
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]
HI = [{"role": "user", "content": "Hello"}]
# Recent SDKs dropped the sampling arguments; the API (ours and Ollama's) still reads them.
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key="ollama", max_retries=0)


def messages(http, **body):
    body.setdefault("model", TINY)
    body.setdefault("max_tokens", 4)
    body.setdefault("messages", HI)
    return http.post("/v1/messages", json=body)


def sse_events(resp) -> list[tuple[str, dict]]:
    """(event name, data) pairs; every data line must be preceded by its matching event line."""
    assert resp.headers["content-type"].startswith("text/event-stream")
    out = []
    for block in resp.text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert name == data["type"], block
        out.append((name, data))
    return out


def assert_anthropic_error(r, status, kind, message):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"] == {"type": kind, "message": message}
    assert re.fullmatch(r"req_[0-9a-f]{24}", body["request_id"])


# --- shapes ----------------------------------------------------------------------------------


def test_message_shape(http):
    body = messages(http, system="Be brief.").json()
    assert re.fullmatch(r"msg_[0-9a-f]{24}", body["id"])
    assert (body["type"], body["role"], body["model"]) == ("message", "assistant", TINY)
    (block,) = body["content"]
    assert block["type"] == "text" and isinstance(block["text"], str)
    assert body["stop_reason"] == "max_tokens" and body["stop_sequence"] is None
    assert body["usage"]["output_tokens"] == 4 and body["usage"]["input_tokens"] > 0


def test_stream_event_sequence(http):
    events = sse_events(messages(http, stream=True, system=[{"type": "text", "text": "Be brief."}]))
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for n, d in events if n == "content_block_delta")
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4 and delta["usage"]["input_tokens"] > 0


def test_sdk_create_and_stream_agree_when_greedy(client):
    kw = {"model": TINY, "max_tokens": 8, "messages": [{"role": "user", "content": "Tell me a story."}], **GREEDY}
    full = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == full.content[0].text == final.content[0].text and text
    assert final.stop_reason == full.stop_reason == "max_tokens"
    assert final.usage.output_tokens == full.usage.output_tokens == 8


def pick_stop(full: str) -> str | None:
    """A short piece of a greedy answer that first occurs after its start and well before its end."""
    for n in (2, 1):
        for i in range(1, len(full) // 2):
            piece = full[i : i + n]
            if piece.strip() and piece.isprintable() and "\ufffd" not in piece and full.index(piece) >= 1:
                return piece
    return None


def test_stop_sequences_report_which_one(http, client):
    for prompt in ("Tell me a story.", "Why is the sky blue?", "Hello"):
        kw = {"model": TINY, "max_tokens": 16, "messages": [{"role": "user", "content": prompt}], **GREEDY}
        full = client.messages.create(**kw).content[0].text
        stop = pick_stop(full)
        if stop:
            break
    assert stop, "no usable stop string in the greedy answers"
    r = client.messages.create(stop_sequences=["never-in-output", stop], **kw)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    assert r.content[0].text == full[: full.index(stop)]
    assert 0 < r.usage.output_tokens < 16
    raw = {"model": TINY, "max_tokens": 16, "messages": kw["messages"], "temperature": 0}
    events = sse_events(http.post("/v1/messages", json={"stream": True, "stop_sequences": [stop], **raw}))
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == full[: full.index(stop)]
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}
    unmatched = client.messages.create(stop_sequences=["never-in-output"], **kw)
    assert unmatched.content[0].text == full and unmatched.stop_reason == "max_tokens"


def test_end_turn(client, scripted):
    r = client.messages.create(model="scripted-tools", max_tokens=20, messages=HI)
    assert r.stop_reason == "end_turn" and r.content[0].text == REPLY


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, kind, message",
    [
        ({"model": "nope"}, 404, "not_found_error", "model 'nope' not found"),
        ({"model": ""}, 400, "invalid_request_error", "model is required"),
        ({"max_tokens": 0}, 400, "invalid_request_error", "max_tokens is required and must be positive"),
        ({"messages": []}, 400, "invalid_request_error", "messages is required"),
        (
            {"temperature": "warm"},
            400,
            "invalid_request_error",
            "json: cannot unmarshal string into Go struct field MessagesRequest.temperature of type float64",
        ),
        (
            {"stop_sequences": ["ok", 7]},
            400,
            "invalid_request_error",
            "json: cannot unmarshal number into Go struct field MessagesRequest.stop_sequences of type string",
        ),
        (
            {"tools": [WEATHER]},
            400,
            "invalid_request_error",
            "registry.ollama.ai/library/tiny:latest does not support tools",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}],
                    }
                ]
            },
            400,
            "invalid_request_error",
            "invalid image source type: url. Only base64 images are supported.",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]},
            400,
            "invalid_request_error",
            "tool_use block missing required 'id' field",
        ),
    ],
)
def test_errors_use_anthropic_envelope(http, body, status, kind, message):
    assert_anthropic_error(messages(http, **body), status, kind, message)


def test_sdk_raises_typed_errors(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="missing-model", max_tokens=4, messages=HI)
    assert e.value.body["error"] == {"type": "not_found_error", "message": "model 'missing-model' not found"}


def test_thinking_is_relaxed_on_models_without_it(http):
    # Claude-style agents ask for thinking on every model; Ollama drops it instead of failing.
    r = messages(http, thinking={"type": "enabled", "budget_tokens": 1024})
    assert r.status_code == 200 and [b["type"] for b in r.json()["content"]] == ["text"]


# --- tools -----------------------------------------------------------------------------------


def test_tool_use(server, client, scripted):
    r = client.messages.create(model="scripted-tools", max_tokens=50, tools=[WEATHER], messages=WEATHER_Q)
    assert r.stop_reason == "tool_use"
    (block,) = r.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == WEATHER_ARGS and block.id


def test_tool_use_streamed(server, http, client, scripted):
    events = sse_events(
        http.post(
            "/v1/messages",
            json={
                "model": "scripted-tools",
                "max_tokens": 50,
                "stream": True,
                "tools": [WEATHER],
                "messages": WEATHER_Q,
            },
        )
    )
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    block = events[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    assert json.loads(events[2][1]["delta"]["partial_json"]) == WEATHER_ARGS
    assert events[4][1]["delta"]["stop_reason"] == "tool_use"
    with client.messages.stream(model="scripted-tools", max_tokens=50, tools=[WEATHER], messages=WEATHER_Q) as s:
        final = s.get_final_message()
    assert final.content[0].input == WEATHER_ARGS and final.stop_reason == "tool_use"


def test_tool_result_round_trip(server, client, scripted):
    first = client.messages.create(model="scripted-tools", max_tokens=50, tools=[WEATHER], messages=WEATHER_Q)
    call = first.content[0]
    history = WEATHER_Q + [
        {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in first.content]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": [{"type": "text", "text": "sunny, 24 degrees"}],
                }
            ],
        },
    ]
    r = client.messages.create(model="scripted-tools", max_tokens=50, tools=[WEATHER], messages=history)
    assert r.stop_reason == "end_turn" and r.content[0].text == TOOL_ANSWER


# --- thinking --------------------------------------------------------------------------------


def test_thinking_blocks(server, client, http, scripted):
    kw = {
        "model": "scripted-think",
        "max_tokens": 50,
        "messages": HI,
        "thinking": {"type": "enabled", "budget_tokens": 512},
    }
    r = client.messages.create(**kw)
    assert [b.type for b in r.content] == ["thinking", "text"]
    assert r.content[0].thinking.strip() == THINKING and r.content[1].text == THOUGHTFUL_ANSWER
    events = sse_events(http.post("/v1/messages", json={"stream": True, **kw}))
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking = "".join(d["delta"]["thinking"] for n, d in events if n == "content_block_delta" and d["index"] == 0)
    assert thinking.strip() == THINKING
    assert {d["delta"]["type"] for n, d in events if n == "content_block_delta" and d["index"] == 1} == {"text_delta"}
    off = client.messages.create(**{**kw, "thinking": {"type": "disabled"}})
    assert [b.type for b in off.content] == ["text"] and off.content[0].text == THOUGHTFUL_ANSWER


# --- a real model ----------------------------------------------------------------------------


def test_smollm_answers(client, smollm):
    r = client.messages.create(
        model=smollm, max_tokens=10, messages=[{"role": "user", "content": "What is the capital of France?"}], **GREEDY
    )
    assert "Paris" in r.content[0].text and r.usage.output_tokens <= 10
