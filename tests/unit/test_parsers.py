"""The stream parsers (mlxollama/parsers: thinking, tool calls, harmony) on text, fed in chunks of every size."""

from __future__ import annotations

import pytest

from mlxollama.parsers.harmony import HarmonyParser
from mlxollama.parsers.thinking import ThinkingParser, template_think_tags
from mlxollama.parsers.tools import BARE_JSON, HERMES, ToolCallParser, ToolFormat, infer_tool_format

from ..support.chatcases import TOOLS, fn
from ..support.tinytemplates import LLAMA31_TEMPLATE, QWEN3_TEMPLATE, QWEN25_TEMPLATE, R1_TEMPLATE


def chunked(parser_add, text: str, size: int):
    out = []
    for i in range(0, len(text), size):
        out.append(parser_add(text[i : i + size]))
    return out


def run_thinking(text: str, size: int, opened: bool = False) -> tuple[str, str]:
    p = ThinkingParser("<think>", "</think>", opened=opened)
    parts = chunked(p.add, text, size) + [p.flush()]
    return "".join(t for t, _ in parts), "".join(c for _, c in parts)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_thinking_split_is_independent_of_chunking(size):
    assert run_thinking("<think>\nLet me see: 17*23 = 391.\n</think>\n\n391", size) == (
        "Let me see: 17*23 = 391.\n",
        "391",
    )
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


def run_tools(fmt: ToolFormat, text: str, size: int, tools=TOOLS):
    p = ToolCallParser(fmt, tools)
    parts = chunked(p.add, text, size) + [p.flush()]
    content = "".join(c for c, _ in parts)
    calls = [call for _, cs in parts for call in cs]
    return content, calls


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_hermes_tool_calls(size):
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "c"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": "{}"}\n</tool_call>'
    )
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
    content, calls = run_tools(
        BARE_JSON,
        '<|python_tag|>{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Rome"}}',
        size,
    )
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
    text = (
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
        '{"city": "Tokyo"}<|call|>'
    )
    p = HarmonyParser()
    parts = chunked(lambda t: p.feed(t), text, size) + [p.flush()]
    assert "".join(c for c, _, _ in parts) == ""
    assert "".join(t for _, t, _ in parts) == "Need the weather."
    assert fn([c for _, _, cs in parts for c in cs]) == [(0, "get_weather", {"city": "Tokyo"})]
    p = HarmonyParser()
    parts = chunked(
        lambda t: p.feed(t),
        "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>Hi there<|return|>",
        size,
    ) + [p.flush()]
    assert ("".join(c for c, _, _ in parts), "".join(t for _, t, _ in parts)) == ("Hi there", "hm")
    # output that never uses the format is still shown
    p = HarmonyParser()
    assert p.feed("plain") == ("", "", []) and p.flush() == ("plain", "", [])
