"""The bundled models' Ollama library layers: smollm2's TEMPLATE (data, rendered by our Go template
interpreter), its params, the capabilities they give, and the tool-call format they imply."""

from __future__ import annotations

import json

import pytest

from mlxollama.convert.bundled import (
    BUNDLED,
    CHAT_MODEL,
    EMBED_MODEL,
    BundledSource,
    LibraryLayers,
    apply_library_layers,
    ensure_bundled,
    library_layers,
)
from mlxollama.engine.catalog import derive_capabilities, load_spec
from mlxollama.parsers.tools import HERMES, ToolCallParser, infer_tool_format
from mlxollama.store import ModelName, Store, build_config_blob, media
from mlxollama.template.ollama import render_messages

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
    },
}
SMOLLM2 = library_layers("smollm2")

TOOLS_SYSTEM = (
    "<|im_start|>system\n"
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out and refuse to answer.\n"
    "If the given question lacks the parameters required by the function, also point it out.\n"
    "You have access to the following tools:\n"
    '<tools>[{"type":"function","function":{"name":"get_weather","description":"Weather of a city",'
    '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string"}}}}}]</tools>\n'
    "The output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
    "The example format is as follows. Please make sure the parameter type is correct. "
    "If no function call is needed, please make the tool calls an empty list '[]'.\n"
    "<tool_call>[\n"
    '{"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}},\n'
    "(more tool calls as required)\n"
    "]</tool_call><|im_end|>\n"
)


def test_smollm2_library_layers_are_ollamas():
    assert SMOLLM2.template.startswith("{{- if .Messages }}\n{{- if .Tools }}<|im_start|>system\n")
    assert SMOLLM2.template.endswith("{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}")
    assert SMOLLM2.params == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert SMOLLM2.system is None  # Ollama's smollm2 has no SYSTEM layer
    chat = next(s for s in BUNDLED if s.name == CHAT_MODEL)
    embed = next(s for s in BUNDLED if s.name == EMBED_MODEL)
    assert library_layers(chat.library) == SMOLLM2
    assert not library_layers(embed.library)  # all-minilm: no template, params or system layer


def test_smollm2_template_gives_tools_capability():
    assert derive_capabilities("llm", None, SMOLLM2.template) == ["completion", "tools"]
    assert derive_capabilities("embedding", None, None) == ["embedding"]


def test_smollm2_template_renders_tool_conversation():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18C and sunny"},
    ]
    prompt = render_messages(SMOLLM2.template, messages, tools=[WEATHER])
    assert prompt == TOOLS_SYSTEM + (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>[\n"
        '{"name": "get_weather", "arguments": {"city":"Paris"}}\n'
        "]</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18C and sunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_template_without_tools_is_plain_chatml():
    prompt = render_messages(
        SMOLLM2.template,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
    )
    assert prompt == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    # The library template's system turn has no <|im_end|>: kept as Ollama ships it.
    assert render_messages(SMOLLM2.template, [{"role": "user", "content": "Hi"}], "Be brief.") == (
        "<|im_start|>system\nBe brief.\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_tool_calls_parse_as_a_json_array():
    # The GGUF's Jinja template names no tool tag; the Ollama template does.
    fmt = infer_tool_format(None, SMOLLM2.template)
    assert fmt == HERMES
    parser = ToolCallParser(fmt, [WEATHER])
    reply = (
        '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}},\n'
        '{"name": "get_weather", "arguments": {"city": "Rome"}}\n]</tool_call>'
    )
    content, calls = "", []
    for ch in reply:  # streamed a character at a time: no call may leak into content
        text, found = parser.add(ch)
        content, calls = content + text, calls + found
    text, found = parser.flush()
    content, calls = content + text, calls + found
    assert content.strip() == ""
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]


def _stored_plain_model(store: Store, name: str, tmp_path) -> ModelName:
    """A model as a plain conversion stores it: files and config, no text layers."""
    from mlxollama.convert.create import package_model_dir

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model_dir / "weights.safetensors").write_bytes(b"\0" * 16)
    config = build_config_blob(
        model_format="mlx",
        model_family="llama",
        model_type="135M",
        file_type="Q4_1",
        capabilities=None,
        context_length=8192,
        embedding_length=576,
    )
    return package_model_dir(store, ModelName.parse(name), model_dir, config=config).name


def test_apply_library_layers_gives_template_params_and_capabilities(tmp_path):
    store = Store(tmp_path / "models")
    name = _stored_plain_model(store, CHAT_MODEL, tmp_path)
    assert load_spec(store, name).capabilities == ["completion"]
    apply_library_layers(store, name, SMOLLM2)
    spec = load_spec(store, name)
    assert spec.capabilities == ["completion", "tools"]
    assert spec.go_template == SMOLLM2.template
    assert spec.params == SMOLLM2.params
    assert spec.system is None
    assert spec.parent_model == ""  # re-layered in place, not derived from another model
    types = [l.media_type for l in spec.stored.manifest.layers]
    assert types.count(media.TEMPLATE) == 1 and types.count(media.PARAMS) == 1


def test_ensure_bundled_adds_library_layers_to_an_older_import(tmp_path):
    store = Store(tmp_path / "models")
    name = _stored_plain_model(store, CHAT_MODEL, tmp_path)
    source = BundledSource(CHAT_MODEL, "not_installed_package", "x.gguf", library="smollm2")
    logs: list[str] = []
    ensure_bundled(store, logs.append, sources=[source])  # present already: nothing is imported
    assert load_spec(store, name).capabilities == ["completion", "tools"]
    assert logs == [f"adding Ollama's template and parameters to {CHAT_MODEL}"]
    digest = store.get_manifest(name).digest_hex
    ensure_bundled(store, logs.append, sources=[source])  # and only once
    assert store.get_manifest(name).digest_hex == digest and len(logs) == 1


def test_ensure_bundled_keeps_a_users_own_template(tmp_path):
    store = Store(tmp_path / "models")
    name = _stored_plain_model(store, CHAT_MODEL, tmp_path)
    apply_library_layers(store, name, LibraryLayers(template="{{ .Prompt }}"))
    ensure_bundled(store, lambda _: None, sources=[BundledSource(CHAT_MODEL, "x", "y", library="smollm2")])
    assert load_spec(store, name).go_template == "{{ .Prompt }}"


@pytest.mark.parametrize("key", ["", "no-such-model"])
def test_library_layers_of_a_model_without_any(key):
    assert not library_layers(key)
