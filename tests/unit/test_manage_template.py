"""Ollama Go templates (mlxollama.template.gotemplate): Go text/template semantics for what real
Modelfile TEMPLATEs use, and Ollama's two execution styles (messages / legacy per-turn)."""

from __future__ import annotations

import pytest

from mlxollama.template.gotemplate import TemplateError, parse, template_vars
from mlxollama.template.ollama import render, render_messages

CHATML_LEGACY = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


def test_legacy_template_runs_once_per_turn_and_leaves_the_last_open():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert render_messages(CHATML_LEGACY, msgs) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"
    )


def test_legacy_prefill_continues_the_assistant_message():
    out = render_messages(CHATML_LEGACY, [{"role": "user", "content": "U"}, {"role": "assistant", "content": "Sure"}])
    assert out == "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nSure"


def test_model_system_is_used_only_without_a_system_message():
    t = "{{ .System }}|{{ .Prompt }}"
    assert render_messages(t, [{"role": "user", "content": "hi"}], "model sys") == "model sys|hi"
    msgs = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    assert render_messages(t, msgs, "model sys") == "mine|hi"


def test_response_is_appended_to_templates_without_it():
    t = "{{ .System }} {{ .Prompt }}"
    assert "response" in template_vars(t)  # appended, as Ollama's Vars() reports
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert render_messages(t, msgs) == " ab c"


TOOLS_TEMPLATE = (
    "{{- if .System }}[S]{{ .System }}{{ end }}"
    "{{- range $i, $m := .Messages }}"
    '{{- if eq .Role "user" }}[U{{ $i }}]{{ .Content }}'
    '{{- else if eq .Role "assistant" }}[A]'
    "{{- if .ToolCalls }}{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ end }}"
    "{{- else }}{{ .Content }}{{ end }}"
    "{{- else }}[T:{{ .ToolName }}]{{ .Content }}{{ end }}"
    "{{- if eq (len (slice $.Messages $i)) 1 }}[END]{{ end }}"
    "{{- end }}"
    "{{- if .Tools }}[TOOLS]{{ range $.Tools }}{{ . }}{{ end }}{{ end }}"
)


def test_messages_template_collates_and_prints_tool_calls_like_go():
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {"z": 1, "a": "<&>"}}}],
        },
        {"role": "tool", "content": "42", "tool_name": "f"},
        {"role": "tool", "content": "43", "tool_name": "f"},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}},
                },
            },
        }
    ]
    out = render_messages(TOOLS_TEMPLATE, msgs, tools=tools)
    # consecutive user messages merge with a blank line, tool messages never do; arguments are a Go
    # map (sorted keys, HTML-escaped JSON); system messages stay in .Messages as well as .System
    assert out == (
        '[S]sys[T:]sys[U1]a\n\nb[A]f{"a":"\\u003c\\u0026\\u003e","z":1}[T:f]42[T:f]43[END]'
        '[TOOLS]{"type":"function","function":{"name":"f","parameters":{"type":"object",'
        '"properties":{"alpha":{"type":"integer"},"zeta":{"type":"string"}}}}}'  # a Go map: sorted
    )


def test_whitespace_trimming_and_comments():
    data = {"X": "x"}
    assert parse("a  {{- .X -}}  \n b").execute(data) == "axb"
    assert parse("a{{/* note */}}b").execute(data) == "ab"
    assert parse("a \n{{- /* note */ -}}\n b").execute(data) == "ab"
    assert parse("{{ -1 }}").execute(data) == "-1"  # not a trim marker without the space


def test_variables_control_flow_and_functions():
    data = {"L": [1, 2, 3, 4, 5], "Empty": [], "M": {"b": 2, "a": "<"}, "S": "héllo", "H": "<a&b>"}
    t = (
        "{{ $n := 0 }}{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}"
        "{{ $n = . }}{{ . }}{{ end }}|{{ $n }}"
    )
    assert parse(t).execute(data) == "13|3"
    assert parse("{{ with .Missing }}yes{{ else }}no{{ end }}").execute(data) == "no"
    assert parse("{{ with .M }}{{ .b }}{{ end }}").execute(data) == "2"
    assert parse("{{ range .Empty }}x{{ else }}empty{{ end }}").execute(data) == "empty"
    assert parse("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}").execute(data) == "a=<;b=2;"
    assert parse('{{ and 1 0 2 }} {{ or 0 "" "z" }} {{ not .Empty }} {{ index .L 1 }}').execute(data) == "0 z true 2"
    assert parse("{{ len .S }} {{ len .L }}").execute(data) == "6 5"  # Go's len counts bytes
    assert parse('{{ "x" | printf "%s-%s" "y" }}').execute(data) == "y-x"
    assert parse("{{ json .L }} {{ json .H }}").execute(data) == '[1,2,3,4,5] "\\u003ca\\u0026b\\u003e"'
    assert parse("{{ if lt 1 2 }}{{ if ge 2 2 }}{{ ne 1 2 }}{{ end }}{{ end }}").execute(data) == "true"
    assert parse("{{ if and .L (gt (len .L) 3) }}long{{ else if .L }}short{{ end }}").execute(data) == "long"


def test_think_fields():
    t = "{{ if .Think }}T{{ end }}{{ .IsThinkSet }}{{ .ThinkLevel }}{{ range .Messages }}{{ .Content }}{{ end }}"
    assert render_messages(t, [{"role": "user", "content": "q"}], think=True) == "Ttruemediumq"
    assert render_messages(t, [{"role": "user", "content": "q"}]) == "falseq"


@pytest.mark.parametrize(
    "bad,message",
    [
        ("{{ nope }}", 'function "nope" not defined'),
        ("{{ if .X }}open", "unexpected EOF"),
        ("stray {{ end }}", "unexpected {{end}}"),
        ("{{ $x }}", 'undefined variable "$x"'),
        ("{{ .X ", "unclosed action"),
        ('{{ template "x" }}', "not supported"),
    ],
)
def test_parse_errors(bad, message):
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}").replace("$", r"\$")):
        parse(bad)


def test_generate_render_keeps_its_single_turn_contract():
    assert render("[INST] {{ .System }} {{ .Prompt }} [/INST]", system="S", prompt="P") == "[INST] S P [/INST]"
    assert render(CHATML_LEGACY, prompt="P") == "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n"
    # a messages-style template given to /api/generate renders the prompt as one user message
    assert (
        render("{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}", system="S", prompt="P")
        == "<system>S<user>P"
    )


# Cases from Ollama's own template tests (template_test.go): same inputs, same expected outputs.
_HELLO = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]
_MISTRAL = [
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n'
    "{{- end }}",
]


@pytest.mark.parametrize("template", _MISTRAL)
def test_ollama_cases_mistral(template):
    assert (
        render_messages(template, _HELLO) == "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )
    system = [{"role": "system", "content": "You are a helpful assistant!"}]
    assert render_messages(template, system + _HELLO) == (
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )


@pytest.mark.parametrize(
    "template",
    [
        "[INST] {{ .Prompt }}[/INST] ",
        "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
        '\n{{- range $i, $m := .Messages }}\n{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST] '
        '{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}\n{{- end }}',
    ],
)
def test_ollama_cases_assistant_prefill(template):
    msgs = _HELLO + [{"role": "assistant", "content": "My name is Ollama and I"}]
    assert render_messages(template, msgs) == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
    )


def test_ollama_cases_suffix_and_vars():
    t = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
    assert render_messages(t, [{"role": "user", "content": "hello"}]) == "hello"
    assert render_messages(t, [], prompt="def add(", suffix="return x") == "<PRE> def add( <SUF>return x <MID>"
    assert template_vars("{{ .Prompt }}") == ["prompt", "response"]
    assert template_vars("{{ with .Tools }}{{ . }}{{ end }} {{ .System }} {{ .Prompt }}") == [
        "prompt",
        "response",
        "system",
        "tools",
    ]
    assert template_vars("{{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}") == ["content", "messages", "role"]


# The constructs of the qwen3 library template: an outer variable assigned inside range, `$.` access,
# think flags, tools printed as JSON, tool calls and results.
QWEN3_LIKE = """{{- $lastUserIdx := -1 -}}
{{- range $idx, $msg := .Messages -}}
{{- if eq $msg.Role "user" }}{{ $lastUserIdx = $idx }}{{ end -}}
{{- end }}
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}
{{- if and $.IsThinkSet (eq $i $lastUserIdx) }}{{ if $.Think }} /think{{ else }} /no_think{{ end }}{{ end }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}{{ else if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>{{ .Content }}</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def test_qwen3_style_template():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
            },
        }
    ]
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "r"},
        {"role": "user", "content": "q2"},
    ]
    assert render_messages(QWEN3_LIKE, msgs, tools=tools, think=False) == (
        '<|im_start|>system\nS\n<tools>\n{"type": "function", "function": {"name":"f","description":"d",'
        '"parameters":{"type":"object","properties":{"x":{"type":"integer"}}}}}\n</tools><|im_end|>\n'
        "<|im_start|>user\nq1<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "f", "arguments": {"x":1}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>r</tool_response><|im_end|>\n"
        "<|im_start|>user\nq2 /no_think<|im_end|>\n<|im_start|>assistant\n"
    )
    # think unset: no marker; no tools and no system: no system turn
    assert render_messages(QWEN3_LIKE, [{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
