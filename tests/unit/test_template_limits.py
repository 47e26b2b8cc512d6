"""A per-request template is client input: it must end in a template error, never hang or leak."""

from __future__ import annotations

import threading
import time

import pytest

from mlxollama.template.gotemplate import TemplateError, parse
from mlxollama.template.ollama import render, render_messages


def test_python_attributes_are_not_template_fields():
    with pytest.raises(TemplateError, match="can't evaluate field upper in type string"):
        render("{{ .Prompt.upper }}", prompt="hi")
    with pytest.raises(TemplateError, match="can't evaluate field __class__"):
        render("{{ .Prompt.__class__ }}", prompt="hi")


def test_nested_ranges_stop_at_the_execution_limit_quickly():
    started = time.monotonic()
    with pytest.raises(TemplateError, match="exceeded its limit"):
        render("{{ range 4000 }}{{ range 4000 }}{{ range 4000 }}x{{ end }}{{ end }}{{ end }}", prompt="hi")
    assert time.monotonic() - started < 20  # bounded: today's limit ends it in well under a second


def test_deep_nesting_is_a_template_error():
    with pytest.raises(TemplateError):
        render("{{ if 1 }}" * 5000 + "{{ end }}" * 5000, prompt="hi")


def test_a_long_real_conversation_stays_within_the_limit():
    template = (
        "{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}{{ range .ToolCalls }}"
        "{{ .Function.Name }}{{ end }}\n{{ end }}<|assistant|>"
    )
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(20000)]
    out = render_messages(template, messages)
    assert out.count("<|user|>") == 10000


def test_the_parse_cache_is_safe_across_threads():
    errors = []

    def work(i):
        try:
            for j in range(200):
                assert parse(f"{{{{ .Prompt }}}}-{i}-{j % 90}").execute({"Prompt": "x"}) == f"x-{i}-{j % 90}"
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
