"""Modelfile parsing (Ollama's parser/parser.go state machine) and its translation to /api/create fields."""

from __future__ import annotations

import pytest

from mlxollama.cli.modelfile import to_create_request
from mlxollama.convert.modelfile import (
    ClientSide,
    Command,
    ModelfileError,
    format_command,
    go_value,
    parse,
    quote,
    to_create_fields,
)

FULL = (
    '''# a comment line
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
ADAPTER @sha256:'''
    + "a" * 64
    + "\n"
)


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


@pytest.mark.parametrize(
    "text,message",
    [
        ("SYSTEM hi\n", "no FROM line"),
        (
            "FOO bar\nFROM x\n",
            '(line 1): command must be one of "from", "license", "template", "system", "adapter", '
            '"draft", "renderer", "parser", "parameter", "message", or "requires"',
        ),
        ("FROM x\nMESSAGE bot hi\n", '(line 2): message role must be one of "system", "user", or "assistant"'),
        ('FROM x\nSYSTEM """never closed\n', "unexpected EOF"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ModelfileError) as e:
        parse(text)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "line,message",
    [
        ("PARAMETER temperature hot", "invalid float value hot"),
        ("PARAMETER num_ctx lots", "invalid int value lots"),
        ("PARAMETER nonsense 1", "unknown parameter 'nonsense'"),
    ],
)
def test_parameter_typing_errors(line, message):
    with pytest.raises(ModelfileError) as e:
        to_create_fields(parse(f"FROM x\n{line}\n"))
    assert str(e.value) == message


def test_quote_round_trips():
    for value in ("plain", " leading", 'multi\nline "quoted"', "multi\nline", "inner  spaces"):
        assert parse(f"FROM x\nSYSTEM {quote(value)}\n")[1].args == value


def test_quote_is_ollamas():
    # parser.quote: only a newline or a space at either end makes a value quoted
    assert quote("{{ .Prompt }}") == "{{ .Prompt }}"
    assert quote("tab\t") == "tab\t"
    assert quote(" x") == '" x"'
    assert quote('a\n"b"') == '"""a\n"b""""'


def test_commands_written_as_ollama_writes_them():
    assert format_command(Command("model", "/blobs/sha256-1")) == "FROM /blobs/sha256-1"
    assert format_command(Command("template", "{{ .Prompt }}")) == "TEMPLATE {{ .Prompt }}"
    assert format_command(Command("system", "You are\nterse.")) == 'SYSTEM "You are\nterse."'
    assert format_command(Command("stop", "<end>")) == "PARAMETER stop <end>"
    assert format_command(Command("message", "user: hi there ")) == 'MESSAGE user "hi there "'
    for cmd in (Command("system", 'say "hi"\nok'), Command("license", "MIT"), Command("message", "user:  spaced")):
        assert parse("FROM x\n" + format_command(cmd) + "\n")[1] == cmd


@pytest.mark.parametrize(
    "value,text",
    [
        (0.7, "0.7"),
        (1.0, "1"),
        (4096, "4096"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (123456.0, "123456"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (True, "true"),
        (False, "false"),
        ("<|eot|>", "<|eot|>"),
    ],
)
def test_parameter_values_print_as_go_does(value, text):
    assert go_value(value) == text


def client_fields(text: str, tmp_path, uploaded: list):
    def upload(path):
        uploaded.append(path.name)
        return "sha256:" + "c" * 64

    return to_create_request(parse(text), tmp_path, upload)


def test_client_uploads_local_files_and_keeps_names_otherwise(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapters.safetensors").write_bytes(b"x")
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    (tmp_path / "lora" / "README.md").write_text("not sent")
    uploaded: list = []
    fields, warnings = client_fields(
        "FROM ./m.gguf\nADAPTER lora\nPARAMETER stop a\nPARAMETER stop b\nMESSAGE user hi\n", tmp_path, uploaded
    )
    digest = "sha256:" + "c" * 64
    assert fields == {
        "files": {"m.gguf": digest},
        "adapters": {"adapters.safetensors": digest, "adapter_config.json": digest},
        "parameters": {"stop": ["a", "b"]},
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert sorted(uploaded) == ["adapter_config.json", "adapters.safetensors", "m.gguf"] and warnings == []
    fields, _ = client_fields("FROM llama3.2\n", tmp_path, uploaded)
    assert fields == {"from": "llama3.2"}


def test_client_and_server_differ_only_where_ollama_does(tmp_path):
    # DRAFT names a model in the store on both sides
    assert to_create_fields(parse("FROM x\nDRAFT y\n")) == {"from": "x", "draft": "y"}
    # the server skips every ignored option key silently
    assert to_create_fields(parse("FROM x\nPARAMETER mirostat 1\nPARAMETER tfs_z 1\n")) == {"from": "x"}
    # the client warns about Ollama's deprecated ones, and types the rest itself
    warned: list = []
    side = ClientSide(lambda arg: None, warned.append)
    assert to_create_fields(parse("FROM x\nDRAFT y\nPARAMETER mirostat 1\n"), side) == {"from": "x", "draft": "y"}
    assert warned == ["warning: parameter mirostat is deprecated"]
    with pytest.raises(ModelfileError, match="unknown parameter 'tfs_z'"):
        to_create_fields(parse("FROM x\nPARAMETER tfs_z 1\n"), side)
    # an ADAPTER the client cannot find is an error there; the server reads no path a client names
    # (only uploaded blobs), with one text that names no path
    with pytest.raises(ModelfileError, match="adapter missing: no such file or directory"):
        to_create_fields(parse("FROM x\nADAPTER missing\n"), side)
    for arg in ("/srv/lora", "./lora", "lora"):
        with pytest.raises(ModelfileError) as e:
            to_create_fields(parse(f"FROM x\nADAPTER {arg}\n"))
        assert str(e.value) == "invalid model reference"
