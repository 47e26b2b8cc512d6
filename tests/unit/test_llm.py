"""The engine (mlxollama/engine/llm.py LoadedLLM) on scripted token sequences: a test sampler replaces
the model's choice in-process, so the real detokenizer, batch generator, grammar and parsers run on
known tokens of tiny family models (tests/support/tinytemplates.py)."""

from __future__ import annotations

import asyncio
import json
import math

import mlx.core as mx
import pytest

from mlxollama.engine import llm as llm_module
from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.engine.structured import format_grammar
from mlxollama.options import Options

from ..support.chatcases import SCHEMAS, TOOLS, fn, validate
from ..support.tinytemplates import FAMILIES, build_family_model


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build_family_model(root / name, name) for name in FAMILIES}


@pytest.fixture(scope="module")
def engines(family_dirs):
    from mlxollama.engine.llm import EngineSettings, LoadedLLM

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = LoadedLLM(family_dirs[name], EngineSettings(num_parallel=4))
        return cache[name]

    yield get
    for e in cache.values():
        e.close()


def script_ids(engine, pieces: list[str]) -> list[int]:
    ids = []
    for p in pieces:
        ids += engine.tokenizer.encode(p, add_special_tokens=False)
    return ids


def run_engine(engine, spec: PromptSpec, sampler, monkeypatch, **options) -> list:
    """Admit one job and step the engine to the end, the sampler choosing every token."""

    async def go():
        if sampler is not None:
            monkeypatch.setattr(llm_module, "make_request_sampler", lambda opts, vocab_size: sampler)
        opts = Options.merged({}, {"temperature": 0, "num_predict": 80, **options}, None, num_ctx=2048)
        job = GenerationJob(spec, opts, logprobs=True)
        engine.admit(job)
        while engine.busy:
            engine.step()
        await asyncio.sleep(0)
        events = []
        while not job.events.empty():
            events.append(job.events.get_nowait())
        return events

    return asyncio.run(go())


def scripted(engine, pieces: list[str]):
    it = iter(script_ids(engine, pieces))
    eos = engine.eos_ids[0]
    # The batch generator samples one step ahead, so the script ends in EOS for good.
    return lambda logprobs: mx.array([next(it, eos)], dtype=mx.uint32)


def joined(events):
    text = [e for e in events if isinstance(e, TextEvent)]
    return (
        "".join(e.text for e in text),
        "".join(e.thinking for e in text),
        [c for e in text for c in (e.tool_calls or [])],
    )


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "alone"])
def test_engine_separates_thinking_and_tool_calls(engines, monkeypatch, batched):
    eng = engines("qwen3")
    # models whose caches cannot merge run alone through mlx-lm's stream_generate
    monkeypatch.setattr(eng, "batchable", batched)
    msgs = [{"role": "user", "content": "weather in Tokyo?"}]
    pieces = [
        "<think>",
        "\nI should call",
        " the tool.\n",
        "</think>",
        "\n\n",
        "<tool_call>",
        '\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n',
        "</tool_call>",
    ]
    events = run_engine(eng, PromptSpec(messages=msgs, tools=TOOLS, think=True), scripted(eng, pieces), monkeypatch)
    content, thinking, calls = joined(events)
    assert (content, thinking) == ("", "I should call the tool.\n")
    assert fn(calls) == [(0, "get_weather", {"city": "Tokyo"})]
    assert isinstance(events[-1], DoneEvent) and events[-1].done_reason == "stop"
    # every generated token still has its logprobs entry, also while call text was held back
    assert sum(len(e.logprobs or []) for e in events if isinstance(e, TextEvent)) == events[-1].eval_count
    # the tool-call chunk carries no content
    assert all(e.text == "" for e in events if isinstance(e, TextEvent) and e.tool_calls)


def test_engine_think_false_and_preopened_thinking(engines, monkeypatch):
    eng = engines("qwen3")
    msgs = [{"role": "user", "content": "hi"}]
    # think:false renders the template's no-think block and leaves the output alone
    events = run_engine(eng, PromptSpec(messages=msgs, think=False), scripted(eng, ["Hello", " there"]), monkeypatch)
    assert joined(events)[:2] == ("Hello there", "")
    r1 = engines("r1")
    # the R1 template opens <think> in the prompt: reasoning is separated even with think:false
    events = run_engine(
        r1, PromptSpec(messages=msgs, think=False), scripted(r1, ["hmm", "</think>", "\n\nHi!"]), monkeypatch
    )
    assert joined(events)[:2] == ("Hi!", "hmm")


def test_engine_harmony_reasoning_calls_and_format(engines, monkeypatch):
    eng = engines("gptoss")
    msgs = [{"role": "user", "content": "weather in Tokyo?"}]
    pieces = [
        "<|channel|>",
        "analysis",
        "<|message|>",
        "Need weather.",
        "<|end|>",
        "<|start|>",
        "assistant to=functions.",
        "get_weather",
        "<|channel|>",
        "commentary json",
        "<|message|>",
        '{"city": "Tokyo"}',
        "<|call|>",
    ]
    events = run_engine(eng, PromptSpec(messages=msgs, tools=TOOLS, think=False), scripted(eng, pieces), monkeypatch)
    content, thinking, calls = joined(events)
    assert (content, thinking) == ("", "Need weather.")
    assert fn(calls) == [(0, "get_weather", {"city": "Tokyo"})]
    # with `format`, the grammar starts at the final channel's message
    header = iter(
        script_ids(
            eng,
            [
                "<|channel|>",
                "analysis",
                "<|message|>",
                "ok",
                "<|end|>",
                "<|start|>",
                "assistant",
                "<|channel|>",
                "final",
                "<|message|>",
            ],
        )
    )
    sampler = lambda logprobs: next(
        (mx.array([t], dtype=mx.uint32) for t in header),  # noqa: E731
        mx.argmax(logprobs, axis=-1).astype(mx.uint32),
    )
    schema = SCHEMAS[2]
    events = run_engine(
        eng,
        PromptSpec(messages=msgs, think=True, grammar=format_grammar(schema)),
        sampler,
        monkeypatch,
        num_predict=300,
    )
    content, thinking, _ = joined(events)
    assert thinking == "ok"
    validate(json.loads(content), schema)


def test_engine_stop_strings_cut_before_parsing(engines, monkeypatch):
    eng = engines("qwen3")
    events = run_engine(
        eng,
        PromptSpec(messages=[{"role": "user", "content": "x"}], think=True),
        scripted(eng, ["<think>", "a b", "</think>", "one two three four"]),
        monkeypatch,
        stop=["three"],
    )
    assert joined(events)[:2] == ("one two ", "a b")
    assert events[-1].done_reason == "stop"


def test_engine_format_waits_for_thinking_to_end(engines, monkeypatch):
    """§7.4: the grammar applies to the answer only. The test sampler checks the masks it sees:
    first token <think> or JSON; unconstrained while reasoning; JSON afterwards."""
    eng = engines("qwen3")
    vocab = eng.tokenizer.get_vocab()
    think, word = vocab["<think>"], eng.tokenizer.encode("The", add_special_tokens=False)[0]
    reasoning = iter(script_ids(eng, ["ok so", "</think>"]))
    seen = {"step": 0, "free": []}

    def sampler(logprobs):
        step = seen["step"]
        seen["step"] += 1
        row = logprobs[0]
        if step == 0:
            assert row[think].item() > -math.inf and row[word].item() == -math.inf
            return mx.array([think], dtype=mx.uint32)
        nxt = next(reasoning, None)
        if nxt is not None:
            seen["free"].append(row[word].item() > -math.inf)
            return mx.array([nxt], dtype=mx.uint32)
        return mx.argmax(logprobs, axis=-1).astype(mx.uint32)

    schema = SCHEMAS[0]
    spec = PromptSpec(messages=[{"role": "user", "content": "a person"}], think=True, grammar=format_grammar(schema))
    events = run_engine(eng, spec, sampler, monkeypatch, num_predict=120)
    content, thinking, _ = joined(events)
    assert thinking == "ok so" and all(seen["free"])
    validate(json.loads(content), schema)
    assert events[-1].done_reason == "stop"


def test_engine_fim_keeps_leading_whitespace(engines, monkeypatch):
    eng = engines("starcoder")
    spec = PromptSpec(fim=("def add(a, b):\n", "\n"), return_context=True)
    events = run_engine(eng, spec, scripted(eng, ["    return", " a + b", "<file_sep>", "junk"]), monkeypatch)
    assert joined(events)[0] == "    return a + b"  # <file_sep> ends the middle
    assert events[-1].done_reason == "stop"
