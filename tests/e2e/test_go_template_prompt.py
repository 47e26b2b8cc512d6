"""A model's own Ollama TEMPLATE layer drives its prompts, as in Ollama (Go template over Jinja)."""

from __future__ import annotations

import httpx
import pytest

TEMPLATE = "{{- range .Messages }}[{{ .Role }}] {{ .Content }}\n{{ end }}[assistant] "
LEGACY = "{{ if .System }}<<{{ .System }}>> {{ end }}Q: {{ .Prompt }}\nA: {{ .Response }}"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        for name, template in (("tiny-gotmpl", TEMPLATE), ("tiny-legacy", LEGACY)):
            r = c.post(
                "/api/create",
                json={"model": name, "from": "tiny", "template": template, "system": "be brief", "stream": False},
            )
            assert r.status_code == 200, r.text
        yield c


def greedy(c, path, body):
    r = c.post(path, json={**body, "stream": False, "options": {"temperature": 0, "num_predict": 6}})
    assert r.status_code == 200, r.text
    return r.json()


def test_messages_template_renders_chat(http):
    chat = greedy(
        http,
        "/api/chat",
        {
            "model": "tiny-gotmpl",
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "again"},
            ],
        },
    )
    rendered = "[system] be brief\n[user] hello\n[assistant] hi\n[user] again\n[assistant] "
    raw = greedy(http, "/api/generate", {"model": "tiny", "prompt": rendered, "raw": True})
    assert chat["message"]["content"] == raw["response"]
    assert chat["prompt_eval_count"] == raw["prompt_eval_count"]


def test_legacy_template_renders_generate(http):
    gen = greedy(http, "/api/generate", {"model": "tiny-legacy", "prompt": "why?"})
    raw = greedy(http, "/api/generate", {"model": "tiny", "prompt": "<<be brief>> Q: why?\nA: ", "raw": True})
    assert gen["response"] == raw["response"]
    assert gen["prompt_eval_count"] == raw["prompt_eval_count"]


def test_show_returns_the_go_template_and_parent(http):
    show = http.post("/api/show", json={"model": "tiny-gotmpl"}).json()
    assert show["template"] == TEMPLATE
    assert show["details"]["parent_model"] == "tiny:latest"
    # listings keep parent_model empty, as Ollama's do
    tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    assert tags["tiny-gotmpl:latest"]["details"]["parent_model"] == ""
