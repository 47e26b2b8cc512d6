"""Tools, thinking, structured outputs, fill-in-the-middle and logprobs (reference §5.6–§10).

Three layers: the stream parsers on text; the engine on scripted token sequences (a test
sampler replaces the model's choice in-process, so the real detokenizer, batch generator, grammar
and parsers run on known tokens); and the live server on tiny models built from family templates
(tests/tinytemplates.py) plus the real SmolLM2 where real text matters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import math

import httpx
import mlx.core as mx
import ollama
import pytest

from mlxollama.engine import llm as llm_module
from mlxollama.engine.catalog import derive_capabilities
from mlxollama.engine.fim import FIM_FORMATS, fim_format_for, fim_format_in_text, fim_tokens
from mlxollama.parsers.harmony import HarmonyParser
from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.engine.structured import FormatError, closed_objects, format_grammar
from mlxollama.parsers.thinking import ThinkingParser, template_think_tags
from mlxollama.parsers.tools import BARE_JSON, HERMES, ToolCallParser, ToolFormat, infer_tool_format
from mlxollama.options import Options
from mlxollama.store import Store

from ..support.store import package_tiny
from ..support.tinytemplates import (FAMILIES, GPTOSS_TEMPLATE, LLAMA31_TEMPLATE, QWEN3_TEMPLATE, QWEN25_TEMPLATE, R1_TEMPLATE,
                            build_family_model)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]


def chunked(parser_add, text: str, size: int):
    out = []
    for i in range(0, len(text), size):
        out.append(parser_add(text[i:i + size]))
    return out


# --- thinking parser ----------------------------------------------------------------------------

def run_thinking(text: str, size: int, opened: bool = False) -> tuple[str, str]:
    p = ThinkingParser("<think>", "</think>", opened=opened)
    parts = chunked(p.add, text, size) + [p.flush()]
    return "".join(t for t, _ in parts), "".join(c for _, c in parts)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_thinking_split_is_independent_of_chunking(size):
    assert run_thinking("<think>\nLet me see: 17*23 = 391.\n</think>\n\n391", size) == ("Let me see: 17*23 = 391.\n", "391")
    assert run_thinking("  \n<think>a</think>b", size) == ("a", "b")
    # no opening tag: thinking was skipped and nothing is swallowed
    assert run_thinking("  Hello <think> there", size) == ("", "  Hello <think> there")
    # the prompt already opened the block
    assert run_thinking("\nreasoning</think>\n\nanswer", size, opened=True) == ("reasoning", "answer")
    # output ends while still thinking, or on a partial closing tag
    assert run_thinking("<think>unfinished</thi", size) == ("unfinished</thi", "")


def test_template_think_tags():
    assert template_think_tags(QWEN3_TEMPLATE) == ("<think>", "</think>")
    assert template_think_tags(R1_TEMPLATE) == ("<think>", "</think>")
    assert template_think_tags(QWEN25_TEMPLATE) is None


# --- tool-call parsers --------------------------------------------------------------------------

def run_tools(fmt: ToolFormat, text: str, size: int, tools=TOOLS):
    p = ToolCallParser(fmt, tools)
    parts = chunked(p.add, text, size) + [p.flush()]
    content = "".join(c for c, _ in parts)
    calls = [call for _, cs in parts for call in cs]
    return content, calls


def fn(calls):
    return [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls]


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_hermes_tool_calls(size):
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "c"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": "{}"}\n</tool_call>')
    content, calls = run_tools(HERMES, text, size)
    assert content == "Let me check.\n"  # call text never leaks; whitespace between calls is dropped
    assert fn(calls) == [(0, "get_weather", {"city": "Tokyo", "unit": "c"}), (1, "get_time", {})]
    assert all(c["id"].startswith("call_") and len(c["id"]) == 13 for c in calls)
    # a malformed call is shown as text rather than lost
    content, calls = run_tools(HERMES, "<tool_call>\nnot json\n</tool_call>", size)
    assert calls == [] and content == "<tool_call>\nnot json\n</tool_call>"
    # a partial tag that turns out not to be one is released
    assert run_tools(HERMES, "a <tool_ b", size) == ("a <tool_ b", [])


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_bare_json_tool_calls(size):
    content, calls = run_tools(BARE_JSON, ' {"name": "get_weather", "parameters": {"city": "Paris"}}', size)
    assert content == "" and fn(calls) == [(0, "get_weather", {"city": "Paris"})]
    content, calls = run_tools(BARE_JSON, '<|python_tag|>{"name": "get_time", "parameters": {}}; '
                                          '{"name": "get_weather", "parameters": {"city": "Rome"}}', size)
    assert content == "" and fn(calls) == [(0, "get_time", {}), (1, "get_weather", {"city": "Rome"})]
    # an answer, or JSON that calls no known tool, is content
    assert run_tools(BARE_JSON, "The weather is fine.", size) == ("The weather is fine.", [])
    assert run_tools(BARE_JSON, '{"name": "Bob", "age": 3}', size) == ('{"name": "Bob", "age": 3}', [])
    # cut off mid-call before any call was made: shown as it is
    assert run_tools(BARE_JSON, '{"name": "get_weather", "param', size)[1] == []


def test_mlx_lm_parsers_are_used_where_they_cover_the_family():
    from mlx_lm.tool_parsers import mistral, qwen3_coder

    class Tok:
        def __init__(self, module):
            self.tool_parser = module.parse_tool_call
            self.tool_call_start = module.tool_call_start
            self.tool_call_end = module.tool_call_end

    fmt = infer_tool_format(Tok(mistral), "[TOOL_CALLS]")
    assert fmt.source == "mistral"
    content, calls = run_tools(fmt, 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}', 3)
    assert content == "Sure." and fn(calls) == [(0, "get_weather", {"city": "Oslo"})]
    assert len(calls[0]["id"]) == 9 and calls[0]["id"].isalnum()  # Mistral templates insist on it
    fmt = infer_tool_format(Tok(qwen3_coder), "")
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nLima\n</parameter>\n</function>\n</tool_call>"
    content, calls = run_tools(fmt, text, 2)
    assert content == "" and fn(calls) == [(0, "get_weather", {"city": "Lima"})]
    # families mlx-lm does not know: Hermes when the template writes <tool_call>, else bare JSON
    assert infer_tool_format(object(), QWEN25_TEMPLATE) is HERMES
    assert infer_tool_format(object(), LLAMA31_TEMPLATE) is BARE_JSON


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_harmony_channels(size):
    """gpt-oss: analysis is reasoning, final the answer, a to=functions.X message a call."""
    text = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
            "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
            '{"city": "Tokyo"}<|call|>')
    p = HarmonyParser()
    parts = chunked(lambda t: p.feed(t), text, size) + [p.flush()]
    assert "".join(c for c, _, _ in parts) == ""
    assert "".join(t for _, t, _ in parts) == "Need the weather."
    assert fn([c for _, _, cs in parts for c in cs]) == [(0, "get_weather", {"city": "Tokyo"})]
    p = HarmonyParser()
    parts = chunked(lambda t: p.feed(t), "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final"
                                         "<|message|>Hi there<|return|>", size) + [p.flush()]
    assert ("".join(c for c, _, _ in parts), "".join(t for _, t, _ in parts)) == ("Hi there", "hm")
    # output that never uses the format is still shown
    p = HarmonyParser()
    assert p.feed("plain") == ("", "", []) and p.flush() == ("plain", "", [])


# --- capabilities, FIM tables, formats ----------------------------------------------------------

def test_capabilities_follow_templates_and_tokens():
    assert derive_capabilities("llm", QWEN25_TEMPLATE, None) == ["completion", "tools"]
    assert derive_capabilities("llm", QWEN3_TEMPLATE, None) == ["completion", "tools", "thinking"]
    assert derive_capabilities("llm", LLAMA31_TEMPLATE, None) == ["completion", "tools"]
    assert derive_capabilities("llm", R1_TEMPLATE, None) == ["completion", "thinking"]
    assert derive_capabilities("llm", GPTOSS_TEMPLATE, None) == ["completion", "tools", "thinking"]
    assert derive_capabilities("llm", None, None, fim=True) == ["completion", "insert"]
    assert derive_capabilities("llm", "{{ messages }}", "{{ .Prompt }}") == ["completion"]
    assert derive_capabilities("embedding", QWEN3_TEMPLATE, None) == ["embedding"]


def test_fim_formats_detected_from_tokenizer_files():
    for fmt in FIM_FORMATS:
        added = [{"id": i, "content": t} for i, t in enumerate(fmt.tokens)]
        assert fim_format_in_text([json.dumps({"added_tokens": added}, ensure_ascii=False)]) is fmt
        assert fim_format_in_text([json.dumps({"added_tokens": added})]) is fmt  # \\u-escaped
        assert ".Suffix" in fmt.go_template
    assert fim_format_in_text(['{"<|im_start|>": 1, "<fim_prefix>": 2}']) is None


def test_fim_prompt_tokens(tmp_path):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(build_family_model(tmp_path / "sc", "starcoder"))
    fmt = fim_format_for(tok)
    assert fmt.name == "starcoder"
    ids = fim_tokens(tok, fmt, "def add(a, b):\n    ", "\n\nprint(add(1, 2))")
    assert tok.decode(ids) == "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))<fim_middle>"
    # over the limit the far ends go: the start of the prefix, the end of the suffix
    short = fim_tokens(tok, fmt, "x = 1\n" * 50 + "def f():", "\n    return 1\n" * 50, limit=40)
    assert len(short) <= 40
    text = tok.decode(short)
    assert text.startswith("<fim_prefix>") and "def f():<fim_suffix>\n    return 1" in text and text.endswith("<fim_middle>")


@pytest.mark.parametrize("fmt", FIM_FORMATS, ids=lambda f: f.name)
def test_fim_token_order_per_family(tmp_path, fmt):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from ..support.tinytemplates import Family, build_tokenizer

    build_tokenizer(tmp_path, Family(fmt.name, None, ["<eos>", *fmt.tokens, *fmt.stops], "<eos>"))
    tok = load_tokenizer(tmp_path)
    assert fim_format_for(tok) is fmt
    text = tok.decode(fim_tokens(tok, fmt, "PRE", "SUF"))
    if fmt.middle is None:  # Codestral: suffix first, the model continues the prefix
        assert text == f"{fmt.suffix}SUF{fmt.prefix}PRE"
    else:
        assert text == f"{fmt.prefix}PRE{fmt.suffix}SUF{fmt.middle}"


def test_format_errors_and_closed_objects():
    with pytest.raises(FormatError):
        format_grammar({"type": "nonsense"})
    assert format_grammar(None) is None and format_grammar("") is None
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
              "$defs": {"X": {"type": "object", "properties": {}}}}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False and closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["X"]["additionalProperties"] is False
    assert closed_objects({"type": "object"}) == {"type": "object"}  # "json": any object


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
        checks = {"object": isinstance(value, dict), "array": isinstance(value, list),
                  "string": isinstance(value, str), "boolean": isinstance(value, bool), "null": value is None,
                  "integer": isinstance(value, int) and not isinstance(value, bool),
                  "number": isinstance(value, (int, float)) and not isinstance(value, bool)}
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
    {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}},
     "required": ["tags"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "number", "minimum": -10, "maximum": 10}, "y": {"type": "number", "minimum": -10, "maximum": 10}},
        "required": ["x", "y"]}}, "required": ["point"]},
    {"type": "object", "properties": {"city": S, "country": S, "population": {"type": "integer", "minimum": 0,
                                                                              "maximum": 99999999}},
     "required": ["city", "country"]},
    {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 1000}}, "required": ["answer"]},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"sku": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"]}}}, "required": ["items"]},
    {"type": "object", "properties": {"status": {"type": "string", "enum": ["active", "inactive"]},
                                      "note": {"anyOf": [S, {"type": "null"}]}}, "required": ["status", "note"]},
    {"type": "object", "properties": {"kind": {"const": "event"}, "day": {"type": "integer", "minimum": 1, "maximum": 31}},
     "required": ["kind", "day"]},
    {"type": "object", "properties": {"user": {"$ref": "#/$defs/User"}}, "required": ["user"],
     "$defs": {"User": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999},
                                                          "admin": {"type": "boolean"}}, "required": ["id", "admin"]}}},
    {"type": "object", "properties": {"scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                                                 "minItems": 2, "maxItems": 4}}, "required": ["scores"]},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
        "c": {"type": "boolean"}}, "required": ["c"]}}, "required": ["b"]}}, "required": ["a"]},
    {"type": "object", "properties": {"title": S, "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                                      "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "sf"]},
                                                 "maxItems": 2}}, "required": ["title", "year", "genres"]},
    {"type": "object", "properties": {"value": {"type": ["integer", "null"], "minimum": 0, "maximum": 50}},
     "required": ["value"]},
    {"type": "object", "properties": {"first": S, "last": S, "email": S}, "required": ["first", "last"]},
    {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}, "required": ["matrix"]},
    {"type": "object", "properties": {"temperature": {"type": "number", "minimum": -50, "maximum": 50},
                                      "unit": {"enum": ["c", "f"]}}, "required": ["temperature", "unit"]},
    {"type": "object", "properties": {"done": {"type": "boolean"}, "count": {"type": "integer", "minimum": 0,
                                                                             "maximum": 10}, "label": S},
     "required": ["done", "count", "label"]},
    {"type": "object", "properties": {"choice": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5},
                                                          {"type": "boolean"}]}}, "required": ["choice"]},
]


def test_twenty_schemas_compile_and_close():
    assert len(SCHEMAS) == 20
    for schema in SCHEMAS:
        assert format_grammar(schema)


# --- the engine on scripted tokens ---------------------------------------------------------------

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
    return ("".join(e.text for e in text), "".join(e.thinking for e in text),
            [c for e in text for c in (e.tool_calls or [])])


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "alone"])
def test_engine_separates_thinking_and_tool_calls(engines, monkeypatch, batched):
    eng = engines("qwen3")
    # models whose caches cannot merge run alone through mlx-lm's stream_generate
    monkeypatch.setattr(eng, "batchable", batched)
    msgs = [{"role": "user", "content": "weather in Tokyo?"}]
    pieces = ["<think>", "\nI should call", " the tool.\n", "</think>", "\n\n", "<tool_call>",
              '\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n', "</tool_call>"]
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
    events = run_engine(r1, PromptSpec(messages=msgs, think=False), scripted(r1, ["hmm", "</think>", "\n\nHi!"]),
                        monkeypatch)
    assert joined(events)[:2] == ("Hi!", "hmm")


def test_engine_harmony_reasoning_calls_and_format(engines, monkeypatch):
    eng = engines("gptoss")
    msgs = [{"role": "user", "content": "weather in Tokyo?"}]
    pieces = ["<|channel|>", "analysis", "<|message|>", "Need weather.", "<|end|>", "<|start|>", "assistant to=functions.",
              "get_weather", "<|channel|>", "commentary json", "<|message|>", '{"city": "Tokyo"}', "<|call|>"]
    events = run_engine(eng, PromptSpec(messages=msgs, tools=TOOLS, think=False), scripted(eng, pieces), monkeypatch)
    content, thinking, calls = joined(events)
    assert (content, thinking) == ("", "Need weather.")
    assert fn(calls) == [(0, "get_weather", {"city": "Tokyo"})]
    # with `format`, the grammar starts at the final channel's message
    header = iter(script_ids(eng, ["<|channel|>", "analysis", "<|message|>", "ok", "<|end|>", "<|start|>",
                                   "assistant", "<|channel|>", "final", "<|message|>"]))
    sampler = lambda logprobs: next((mx.array([t], dtype=mx.uint32) for t in header),  # noqa: E731
                                    mx.argmax(logprobs, axis=-1).astype(mx.uint32))
    schema = SCHEMAS[2]
    events = run_engine(eng, PromptSpec(messages=msgs, think=True, grammar=format_grammar(schema)), sampler,
                        monkeypatch, num_predict=300)
    content, thinking, _ = joined(events)
    assert thinking == "ok"
    validate(json.loads(content), schema)


def test_engine_stop_strings_cut_before_parsing(engines, monkeypatch):
    eng = engines("qwen3")
    events = run_engine(eng, PromptSpec(messages=[{"role": "user", "content": "x"}], think=True),
                        scripted(eng, ["<think>", "a b", "</think>", "one two three four"]), monkeypatch,
                        stop=["three"])
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


# --- live server ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fam_models(models_dir, family_dirs):
    """The family models packaged into the session store (the server reads manifests per request)."""
    store = Store(models_dir)
    names = {}
    for name, d in family_dirs.items():
        names[name] = f"tiny-{name}:latest"
        package_tiny(store, names[name], d)
    return names


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def ndjson(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_show_capabilities_and_fim_template(http, fam_models):
    caps = {k: http.post("/api/show", json={"model": m}).json()["capabilities"] for k, m in fam_models.items()}
    assert caps["qwen25"] == ["completion", "tools", "insert"]  # Qwen vocabularies carry FIM tokens
    assert caps["qwen3"] == ["completion", "tools", "insert", "thinking"]
    assert caps["llama31"] == ["completion", "tools"]
    assert caps["r1"] == ["completion", "thinking"]
    assert caps["gptoss"] == ["completion", "tools", "thinking"]
    assert caps["starcoder"] == ["completion", "insert"]
    # Continue reads /api/show with {"name": ...} and turns FIM on when the template has .Suffix
    show = http.post("/api/show", json={"name": fam_models["starcoder"]}).json()
    assert ".Suffix" in show["template"] and "<fim_prefix>" in show["template"]
    tags = {m["name"]: m.get("capabilities") for m in http.get("/api/tags").json()["models"]}
    assert "thinking" in tags[fam_models["qwen3"]]


def test_capability_errors_on_family_models(http, fam_models):
    r = http.post("/api/chat", json={"model": fam_models["llama31"], "think": True,
                                     "messages": [{"role": "user", "content": "x"}]})
    assert (r.status_code, r.json()) == (400, {"error": f'"{fam_models["llama31"]}" does not support thinking'})
    r = http.post("/api/generate", json={"model": fam_models["r1"], "prompt": "x", "suffix": "y"})
    assert (r.status_code, r.json()) == (400, {"error": "registry.ollama.ai/library/tiny-r1:latest does not support insert"})
    r = http.post("/api/chat", json={"model": fam_models["r1"], "tools": TOOLS,
                                     "messages": [{"role": "user", "content": "x"}]})
    assert r.json() == {"error": "registry.ollama.ai/library/tiny-r1:latest does not support tools"}
    r = http.post("/api/chat", json={"model": fam_models["qwen3"], "format": {"type": "bogus"},
                                     "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 500 and r.json()["error"].startswith("invalid format: ")


def test_tool_history_round_trip(http, fam_models):
    """A follow-up turn with the assistant's call (arguments as object, or JSON text as OpenAI
    clients send) and the tool result (tool_name / tool_call_id) renders through each template."""
    for family in ("qwen25", "qwen3", "llama31"):
        for args in ({"city": "Tokyo"}, '{"city": "Tokyo"}'):
            messages = [
                {"role": "user", "content": "weather in Tokyo?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": args}}]},
                {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather", "tool_call_id": "call_1"},
            ]
            r = http.post("/api/chat", json={"model": fam_models[family], "messages": messages, "tools": TOOLS,
                                             "stream": False, "think": False,
                                             "options": {"num_predict": 4, "temperature": 0}})
            assert r.status_code == 200, (family, r.text)
            body = r.json()
            assert body["done"] and body["message"]["role"] == "assistant", body
            assert body["prompt_eval_count"] > 100  # the tool definitions were rendered


def test_thinking_switch_reaches_the_template(http, fam_models):
    def prompt_tokens(think):
        body = {"model": fam_models["qwen3"], "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
        if think is not None:
            body["think"] = think
        r = http.post("/api/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()["prompt_eval_count"]

    # think:false adds Qwen3's empty <think></think> block; absent means on (Ollama >= 0.12.4)
    assert prompt_tokens(False) > prompt_tokens(True) == prompt_tokens(None) == prompt_tokens("low")


def test_structured_outputs_tiny_model_twenty_schemas_greedy_and_sampled(server, fam_models):
    """Constrained decoding makes even random weights valid: 20 schemas x (greedy, sampled),
    all at once through the batching server, on generate and chat."""
    model = fam_models["qwen25"]

    def one(i):
        schema = SCHEMAS[i % 20]
        sampled = i >= 20
        options = {"temperature": 1.0, "seed": i, "num_predict": 400} if sampled else {"temperature": 0, "num_predict": 400}
        if i % 2:
            body = {"model": model, "prompt": "JSON please", "format": schema, "stream": False, "options": options}
            r = httpx.post(server.url + "/api/generate", json=body, timeout=300)
            text = r.json()["response"]
        else:
            body = {"model": model, "messages": [{"role": "user", "content": "JSON please"}], "format": schema,
                    "stream": False, "options": options}
            r = httpx.post(server.url + "/api/chat", json=body, timeout=300)
            text = r.json()["message"]["content"]
        assert r.status_code == 200, r.text
        assert r.json()["done_reason"] == "stop", (schema, text)
        validate(json.loads(text), schema)
        return text

    with cf.ThreadPoolExecutor(40) as pool:
        outputs = list(pool.map(one, range(40)))
    assert len(set(outputs)) > 20  # different schemas and samples really gave different answers


def test_structured_outputs_smollm(server, smollm):
    """The real model, a few schemas: this CPU decodes SmolLM2 at a few tokens per second."""
    cases = [
        ("Give me a person as JSON with name and age.", SCHEMAS[0], {"temperature": 0}),
        ("Is the sky blue? Answer in JSON.", SCHEMAS[1], {"temperature": 0.8, "seed": 3}),
        ("Pick a color. Answer in JSON.", SCHEMAS[2], {"temperature": 0}),
        ("What is the capital of France? Answer in JSON.", "json", {"temperature": 0}),
    ]

    def one(case):
        prompt, schema, options = case
        r = httpx.post(server.url + "/api/chat", json={
            "model": smollm, "messages": [{"role": "user", "content": prompt}], "format": schema, "stream": False,
            "options": {**options, "num_predict": 48}}, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()

    with cf.ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(one, cases))
    for (_, schema, _), body in zip(cases, results):
        text = body["message"]["content"]
        if body["done_reason"] == "length" and schema == "json":
            continue  # an open-ended object may outrun num_predict; the schemas above may not
        value = json.loads(text)
        validate(value, {"type": "object"} if schema == "json" else schema)


def test_fim_continue_autocomplete_request(server, fam_models):
    model = fam_models["starcoder"]
    show = httpx.post(server.url + "/api/show", json={"name": model}).json()
    assert ".Suffix" in show["template"]
    # Continue's exact shape: no "stream" key (so NDJSON), keep_alive 1800, its options
    body = {"model": model, "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n", "keep_alive": 1800,
            "options": {"temperature": 0.01, "top_p": 0.95, "num_predict": 8, "stop": ["\n\n"], "num_ctx": 8192}}
    r = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(r)
    assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])
    assert all("response" in line for line in lines)
    # the context starts with the FIM prompt built from the tokenizer's tokens
    r = httpx.post(server.url + "/api/generate", json={**body, "stream": False, "options": {"num_predict": 4}}).json()
    assert r["done"] and r["context"][:1] and "thinking" not in r
    # raw passes the prompt through untouched
    raw = httpx.post(server.url + "/api/generate", json={"model": model, "prompt": "<fim_prefix>x<fim_suffix>y<fim_middle>",
                                                         "raw": True, "stream": False, "options": {"num_predict": 2}}).json()
    assert raw["done"] and "context" not in raw


def test_streaming_chat_chunks_for_thinking_model(http, fam_models):
    r = http.post("/api/chat", json={"model": fam_models["qwen3"], "messages": [{"role": "user", "content": "hi"}],
                                     "think": "medium", "tools": TOOLS, "logprobs": True,
                                     "options": {"num_predict": 6, "temperature": 0}})
    lines = ndjson(r)
    assert lines[-1]["done"] and lines[-1]["done_reason"] in ("stop", "length")
    for line in lines:
        msg = line["message"]
        assert msg["role"] == "assistant" and isinstance(msg["content"], str)
        assert set(msg) <= {"role", "content", "thinking", "tool_calls"}
    # logprobs still arrive for every token with the parsers in the way
    assert sum(len(line.get("logprobs", [])) for line in lines) == lines[-1]["eval_count"]


def test_official_client_tools_think_format(server, fam_models):
    client = ollama.Client(host=server.url)
    model = fam_models["qwen3"]
    opts = {"temperature": 0, "num_predict": 8}
    r = client.chat(model=model, messages=[{"role": "user", "content": "weather in Tokyo?"}],
                    tools=TOOLS, think=True, options=opts)
    assert r.done and r.message.role == "assistant"
    assert r.message.tool_calls is None or all(tc.function.name for tc in r.message.tool_calls)
    r = client.chat(model=model, messages=[{"role": "user", "content": "a person"}], think=False,
                    format=SCHEMAS[0], options={"temperature": 0, "num_predict": 200})
    validate(json.loads(r.message.content), SCHEMAS[0])
    r = client.generate(model=model, prompt="hi", think="low", options=opts)
    assert r.done and isinstance(r.response, str)
    parts = list(client.chat(model=model, messages=[{"role": "user", "content": "hi"}], think=True, stream=True,
                             options=opts))
    assert parts[-1].done


# --- end to end on scripted models (tests/scriptedmodel.py: next token = f(last token)) ------------

@pytest.fixture(scope="module")
def scripted_models(models_dir, tmp_path_factory):
    from ..support.scriptedmodel import ensure_scripted_models

    ensure_scripted_models(models_dir, tmp_path_factory.mktemp("scripted"))


def test_scripted_tool_call_streams_whole_and_gathers(http, server, scripted_models):
    from ..support.scriptedmodel import WEATHER_ARGS, WEATHER_TOOL

    body = {"model": "scripted-tools", "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [WEATHER_TOOL], "options": {"temperature": 0}}
    lines = ndjson(http.post("/api/chat", json=body))
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1 and not with_calls[0]["done"] and with_calls[0]["message"]["content"] == ""
    (call,) = with_calls[0]["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": WEATHER_ARGS}
    assert call["id"].startswith("call_")
    assert "".join(line["message"]["content"] for line in lines) == ""  # no call text in content
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    whole = http.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["message"]["content"] == "" and whole["message"]["tool_calls"][0]["function"]["arguments"] == WEATHER_ARGS
    # the official client, and the follow-up turn with the result
    client = ollama.Client(host=server.url)
    r = client.chat(model="scripted-tools", messages=body["messages"], tools=[WEATHER_TOOL], options={"temperature": 0})
    (tc,) = r.message.tool_calls
    assert tc.function.name == "get_weather" and dict(tc.function.arguments) == WEATHER_ARGS
    follow = body["messages"] + [r.message, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    r2 = client.chat(model="scripted-tools", messages=follow, tools=[WEATHER_TOOL], options={"temperature": 0})
    assert r2.message.content and not r2.message.tool_calls


def test_scripted_thinking_streams_and_switches_off(http, server, scripted_models):
    from ..support.scriptedmodel import THINKING, THOUGHTFUL_ANSWER

    msgs = [{"role": "user", "content": "hi"}]
    lines = ndjson(http.post("/api/chat", json={"model": "scripted-think", "messages": msgs}))  # think absent: on
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    assert (thinking, content) == (THINKING + "\n", THOUGHTFUL_ANSWER)
    first_content = next(i for i, line in enumerate(lines) if line["message"]["content"])
    assert all("thinking" not in line["message"] for line in lines[first_content + 1:])
    client = ollama.Client(host=server.url)
    r = client.chat(model="scripted-think", messages=msgs, think=True)
    assert (r.message.thinking, r.message.content) == (THINKING + "\n", THOUGHTFUL_ANSWER)
    r = client.chat(model="scripted-think", messages=msgs, think=False)
    assert (r.message.thinking, r.message.content) == (None, THOUGHTFUL_ANSWER)
    g = http.post("/api/generate", json={"model": "scripted-think", "prompt": "hi", "stream": False}).json()
    assert (g["thinking"], g["response"]) == (THINKING + "\n", THOUGHTFUL_ANSWER)


def test_scripted_json_and_fim(http, server, scripted_models):
    from ..support.scriptedmodel import FIM_MIDDLE, JSON_ANSWER

    r = ollama.Client(host=server.url).chat(model="scripted-json", messages=[{"role": "user", "content": "hi"}],
                                            format="json")
    assert json.loads(r.message.content) == json.loads(JSON_ANSWER)
    # Continue's autocomplete request; the middle keeps its leading indentation
    assert ".Suffix" in http.post("/api/show", json={"name": "scripted-fim"}).json()["template"]
    body = {"model": "scripted-fim", "prompt": "def add(a, b):\n", "suffix": "\nprint(add(1, 2))\n", "keep_alive": 1800,
            "options": {"temperature": 0.01, "num_predict": 16}}
    lines = ndjson(http.post("/api/generate", json=body))
    assert lines[-1]["done"] and "".join(line["response"] for line in lines) == FIM_MIDDLE
