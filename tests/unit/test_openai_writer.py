"""The OpenAI chat stream writer (mlxollama/api/openai.py ChatWriter) on hand-made engine events:
writer details no model produces on demand."""

from __future__ import annotations

import asyncio
import json
import re

from mlxollama.api.openai import ChatWriter
from mlxollama.api.service import Metrics
from mlxollama.engine.jobs import DoneEvent, ErrorEvent, TextEvent


class FakeGeneration:
    def __init__(self, *events):
        self.events = list(events)
        self.done = None

    async def next_event(self):
        event = self.events.pop(0)
        if isinstance(event, DoneEvent):
            self.done = event
        return event

    def metrics(self):
        return Metrics(self.done.done_reason, 0, 0, self.done.prompt_eval_count, 0, self.done.eval_count, 0)


class FakeResponse:
    def __init__(self):
        self.sent = []

    async def send(self, text):
        self.sent.append(text)

    async def eof(self):
        pass


def stream_chunks(*events, include_usage=False):
    gen, response = FakeGeneration(*events), FakeResponse()

    async def run():
        await ChatWriter("m", include_usage).stream(response, gen, await gen.next_event())

    asyncio.run(run())
    return [s.removeprefix("data: ").removesuffix("\n\n") for s in response.sent]


def test_thinking_and_content_in_one_event_become_two_chunks():
    out = stream_chunks(TextEvent("Hi", thinking="hmm"), DoneEvent("stop", 3, 0, 2, 0))
    first, second, finish, done = out
    assert json.loads(first)["choices"][0]["delta"] == {"role": "assistant", "reasoning": "hmm"}
    assert json.loads(second)["choices"][0]["delta"] == {"content": "Hi"}
    assert json.loads(finish)["choices"][0]["finish_reason"] == "stop" and done == "[DONE]"


def test_tool_calls_get_ids_and_stream_wide_indices():
    call = {"function": {"name": "f", "arguments": {"a": 1}}}  # no id, no index from the engine
    out = stream_chunks(TextEvent("", tool_calls=[call]), TextEvent("", tool_calls=[call]), DoneEvent("stop"))
    calls = [json.loads(c)["choices"][0]["delta"]["tool_calls"][0] for c in out[:2]]
    assert [c["index"] for c in calls] == [0, 1]
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", c["id"]) for c in calls) and calls[0]["id"] != calls[1]["id"]
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert json.loads(out[2])["choices"][0]["finish_reason"] == "tool_calls"


def test_mid_stream_error_is_an_error_object_without_done():
    out = stream_chunks(TextEvent("Hi"), ErrorEvent("out of memory", 500))
    assert json.loads(out[-1]) == {
        "error": {"message": "out of memory", "type": "api_error", "param": None, "code": None}
    }
    assert "[DONE]" not in out


def test_empty_completion_still_opens_with_the_role():
    out = stream_chunks(DoneEvent("length", 3, 0, 0, 0), include_usage=True)
    assert json.loads(out[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert json.loads(out[2])["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
