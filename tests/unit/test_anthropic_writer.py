"""The Anthropic Messages writer (mlxollama/api/anthropic.py MessageWriter) on hand-made engine events:
block bookkeeping no model produces on demand."""

from __future__ import annotations

import json

from mlxollama.api.anthropic import MessageWriter
from mlxollama.api.service import Metrics
from mlxollama.engine.jobs import DoneEvent, TextEvent


def parse_events(chunks: list[str]) -> list[tuple[str, dict]]:
    out = []
    for c in chunks:
        name, data = c.removesuffix("\n\n").split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_blocks_open_and_close_in_order():
    w = MessageWriter("m", 10, [])
    call = {"function": {"name": "f", "arguments": {"x": 1}}}
    chunks = w.feed(TextEvent("", thinking="hmm")) + w.feed(TextEvent("a", tool_calls=[call])) + w.feed(TextEvent("b"))
    tail, final = w.finish(DoneEvent("stop"), FakeGen())
    events = parse_events(chunks + tail)
    starts = [(d["index"], d["content_block"]["type"]) for n, d in events if n == "content_block_start"]
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert starts == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "text")] and stops == [0, 1, 2, 3]
    assert final["stop_reason"] == "tool_use"
    call_id = next(d["content_block"]["id"] for n, d in events if n == "content_block_start" and d["index"] == 2)
    assert w.message(final)["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": ""},
        {"type": "text", "text": "a"},
        {"type": "tool_use", "id": call_id, "name": "f", "input": {"x": 1}},
        {"type": "text", "text": "b"},
    ]


def test_stop_sequence_split_across_events_is_held_back():
    w = MessageWriter("m", 10, ["STOP"])
    text = [
        d["delta"]["text"]
        for ev in ("hello ST", "OP and more")
        for n, d in parse_events(w.feed(TextEvent(ev, logprobs=[{}])))
        if n == "content_block_delta"
    ]
    assert "".join(text) == "hello " and w.stopped
    _, final = w.finish(None, FakeGen())
    assert final == {
        "stop_reason": "stop_sequence",
        "stop_sequence": "STOP",
        "usage": {"input_tokens": 10, "output_tokens": 2},
    }


class FakeGen:
    def metrics(self):
        return Metrics("stop", 0, 0, 7, 0, 3, 0)
