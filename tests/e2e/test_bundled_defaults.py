"""The bundled defaults as Ollama ships them: smollm2:135m with the library's TEMPLATE, stop list and
`tools` capability (Open WebUI sends its built-in tools with every chat), all-minilm an embedder.

Real-model generations stay a few tokens long, and every chat here sends the same tools, so the
long tools system prompt is prefilled once and then comes from the prompt cache.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import mlx.core as mx
import pytest

from mlxollama.convert.bundled import library_layers
from mlxollama.engine import llm as llm_module
from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.options import Options
from mlxollama.parsers.tools import BARE_JSON

from ..support.tinytemplates import Family, build_family_model

SMOLLM2 = library_layers("smollm2")
# Shaped like the built-in tools Open WebUI 0.12 attaches to every chat, kept small: the CPU
# prefills a few tokens a second, and the library's tools preamble is already ~250 tokens.
OPEN_WEBUI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the web",
            "parameters": {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "fetch_url",
            "description": "Fetch a web page",
            "parameters": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_current_timestamp",
            "description": "Current date and time",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]
GREEDY_SHORT = {"temperature": 0, "num_predict": 4}


def show(server, model: str) -> dict:
    r = httpx.post(f"{server.url}/api/show", json={"model": model}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_show_smollm2_reports_the_library_template_params_and_tools(server, smollm):
    info = show(server, smollm)
    assert info["capabilities"] == ["completion", "tools"]
    assert info["template"] == SMOLLM2.template
    assert info["parameters"].splitlines() == [f'{"stop":<30} "<|im_start|>"', f'{"stop":<30} "<|im_end|>"']
    assert "system" not in info  # Ollama's smollm2 has no SYSTEM layer
    modelfile = info["modelfile"]
    assert f'TEMPLATE """{SMOLLM2.template}"""' in modelfile
    assert "PARAMETER stop <|im_start|>" in modelfile and "PARAMETER stop <|im_end|>" in modelfile


def test_show_all_minilm_is_an_embedder(server, minilm):
    info = show(server, minilm)
    assert info["capabilities"] == ["embedding"]
    assert not info.get("parameters") and "system" not in info


def test_open_webui_first_message_with_builtin_tools_answers(server, smollm):
    """Open WebUI streams its first chat with its tools attached: answered, not refused."""
    body = {
        "model": smollm,
        "messages": [{"role": "user", "content": "Hi!"}],
        "tools": OPEN_WEBUI_TOOLS,
        "stream": True,
        "options": GREEDY_SHORT,
    }
    with httpx.stream("POST", f"{server.url}/api/chat", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read().decode()
        chunks = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert all("error" not in c for c in chunks), chunks
    final = chunks[-1]
    assert final["done"] and final["done_reason"] in ("stop", "length")
    assert final["prompt_eval_count"] > 250  # the library's tools preamble was rendered
    content = "".join(c["message"].get("content", "") for c in chunks)
    calls = [tc for c in chunks for tc in c["message"].get("tool_calls") or []]
    assert content.strip() or calls
    assert all(c["message"]["role"] == "assistant" for c in chunks)


def test_tools_on_the_default_model_through_the_ollama_client(server, smollm):
    import ollama

    r = ollama.Client(host=server.url).chat(
        model=smollm, messages=[{"role": "user", "content": "Hello"}], tools=OPEN_WEBUI_TOOLS, options=GREEDY_SHORT
    )
    assert r.done and r.message.role == "assistant"
    assert (r.message.content or "").strip() or r.message.tool_calls


# --- the runner takes the tool-call tag from the Ollama TEMPLATE --------------------------------

# SmolLM2's GGUF tokenizer: ChatML special tokens, a Jinja template that names no tool-call tag.
SMOLLM2_GGUF_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_LIKE = Family("smollm2", SMOLLM2_GGUF_JINJA, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>")


@pytest.fixture(scope="module")
def smollm2_like_engine(tmp_path_factory):
    from mlxollama.engine.llm import EngineSettings, LoadedLLM

    engine = LoadedLLM(build_family_model(tmp_path_factory.mktemp("smollm2-like"), SMOLLM2_LIKE), EngineSettings())
    yield engine
    engine.close()


def _generate_scripted(engine, spec: PromptSpec, text: str, monkeypatch) -> tuple[str, list[dict], DoneEvent]:
    """One job stepped to the end, a test sampler choosing the tokens of `text` then EOS."""
    ids = iter(engine.tokenizer.encode(text, add_special_tokens=False))
    eos = engine.eos_ids[0]
    monkeypatch.setattr(
        llm_module,
        "make_request_sampler",
        lambda opts, vocab_size: lambda logprobs: mx.array([next(ids, eos)], dtype=mx.uint32),
    )

    async def go():
        job = GenerationJob(spec, Options.merged({"temperature": 0, "num_predict": 400}, num_ctx=2048))
        engine.admit(job)
        while engine.busy:
            engine.step()
        await asyncio.sleep(0)
        events = []
        while not job.events.empty():
            events.append(job.events.get_nowait())
        return events

    events = asyncio.run(go())
    text_events = [e for e in events if isinstance(e, TextEvent)]
    return ("".join(e.text for e in text_events), [c for e in text_events for c in e.tool_calls or []], events[-1])


def test_tool_calls_in_the_library_format_parse(smollm2_like_engine, monkeypatch):
    engine = smollm2_like_engine
    assert engine.tool_format == BARE_JSON  # the Jinja template alone names no tag
    reply = (
        '<tool_call>[\n{"name": "search_web", "arguments": {"query": "sky"}},\n'
        '{"name": "fetch_url", "arguments": {"url": "http://a.b"}}\n]</tool_call>'
    )
    messages = [{"role": "user", "content": "Look it up"}]
    spec = PromptSpec(messages=messages, tools=OPEN_WEBUI_TOOLS, go_template=SMOLLM2.template)
    content, calls, done = _generate_scripted(engine, spec, reply, monkeypatch)
    assert content == ""
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("search_web", {"query": "sky"}),
        ("fetch_url", {"url": "http://a.b"}),
    ]
    assert isinstance(done, DoneEvent) and done.done_reason == "stop"
    # Without the Ollama TEMPLATE nothing names the tag, and the same text stays content.
    content, calls, _ = _generate_scripted(
        engine, PromptSpec(messages=messages, tools=OPEN_WEBUI_TOOLS), reply, monkeypatch
    )
    assert calls == [] and content == reply
