"""Modelfile parsing (Ollama's parser/parser.go state machine) and its translation to /api/create fields."""

from __future__ import annotations

import pytest

from mlxollama.convert.modelfile import Command, ModelfileError, parse, quote, to_create_fields

FULL = '''# a comment line
FROM llama3.2
PARAMETER temperature 0.7
PARAMETER stop "<|eot_id|>"
PARAMETER stop </s>
parameter num_ctx 4096
SYSTEM """You are
Mario, "the" plumber."""
TEMPLATE "{{ .Prompt }}"
MESSAGE user Is Toronto in Canada?
MESSAGE assistant yes
LICENSE MIT license
ADAPTER @sha256:''' + "a" * 64 + "\n"


def test_commands_keep_ollamas_shape():
    cmds = parse(FULL)
    assert cmds == [
        Command("model", "llama3.2"),
        Command("temperature", "0.7"),
        Command("stop", "<|eot_id|>"),
        Command("stop", "</s>"),
        Command("num_ctx", "4096"),
        Command("system", 'You are\nMario, "the" plumber.'),
        Command("template", "{{ .Prompt }}"),
        Command("message", "user: Is Toronto in Canada?"),
        Command("message", "assistant: yes"),
        Command("license", "MIT license"),
        Command("adapter", "@sha256:" + "a" * 64),
    ]


def test_translation_to_create_fields():
    fields = to_create_fields(parse(FULL))
    assert fields == {
        "from": "llama3.2",
        "system": 'You are\nMario, "the" plumber.',
        "template": "{{ .Prompt }}",
        "adapters": {"adapter.gguf": "sha256:" + "a" * 64},
        "parameters": {"temperature": 0.7, "stop": ["<|eot_id|>", "</s>"], "num_ctx": 4096},
        "messages": [{"role": "user", "content": "Is Toronto in Canada?"}, {"role": "assistant", "content": "yes"}],
        "license": ["MIT license"],
    }


def test_from_an_uploaded_blob_becomes_files():
    fields = to_create_fields(parse("FROM @sha256:" + "b" * 64 + "\nPARAMETER use_mmap false\n"))
    assert fields == {"files": {"model.gguf": "sha256:" + "b" * 64}, "parameters": {"use_mmap": False}}


def test_crlf_tabs_and_bom():
    cmds = parse("\ufeffFROM x\r\nSYSTEM\tindented  words\r\n")
    assert cmds == [Command("model", "x"), Command("system", "indented  words")]


@pytest.mark.parametrize("text,message", [
    ("SYSTEM hi\n", "no FROM line"),
    ("FOO bar\nFROM x\n", '(line 1): command must be one of "from", "license", "template", "system", "adapter", '
                          '"draft", "renderer", "parser", "parameter", "message", or "requires"'),
    ("FROM x\nMESSAGE bot hi\n", '(line 2): message role must be one of "system", "user", or "assistant"'),
    ('FROM x\nSYSTEM """never closed\n', "unexpected EOF"),
])
def test_parse_errors(text, message):
    with pytest.raises(ModelfileError) as e:
        parse(text)
    assert str(e.value) == message


@pytest.mark.parametrize("line,message", [
    ("PARAMETER temperature hot", "invalid float value hot"),
    ("PARAMETER num_ctx lots", "invalid int value lots"),
    ("PARAMETER nonsense 1", "unknown parameter 'nonsense'"),
])
def test_parameter_typing_errors(line, message):
    with pytest.raises(ModelfileError) as e:
        to_create_fields(parse(f"FROM x\n{line}\n"))
    assert str(e.value) == message


def test_quote_round_trips():
    for value in ("plain", " leading", 'multi\nline "quoted"', "multi\nline"):
        assert parse(f"FROM x\nSYSTEM {quote(value)}\n")[1].args == value
