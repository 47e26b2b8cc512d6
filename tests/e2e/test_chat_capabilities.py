"""Tools, thinking, structured outputs, fill-in-the-middle and logprobs (reference §5.6–§10) on the
live server: tiny models built from family templates (tests/support/tinytemplates.py), scripted
models (tests/support/scriptedmodel.py), and the real SmolLM2 where real text matters.

The layers below the server run without one under tests/unit/: the stream parsers (test_parsers.py),
capabilities, FIM and formats (test_catalog.py, test_fim.py, test_structured.py) and the engine on
scripted tokens (test_llm.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import ollama
import pytest

from mlxollama.store import Store

from ..support.chatcases import SCHEMAS, TOOLS, validate
from ..support.store import package_tiny
from ..support.tinytemplates import FAMILIES, build_family_model

# --- live server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build_family_model(root / name, name) for name in FAMILIES}


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
    r = http.post(
        "/api/chat",
        json={"model": fam_models["llama31"], "think": True, "messages": [{"role": "user", "content": "x"}]},
    )
    assert (r.status_code, r.json()) == (400, {"error": f'"{fam_models["llama31"]}" does not support thinking'})
    r = http.post("/api/generate", json={"model": fam_models["r1"], "prompt": "x", "suffix": "y"})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "registry.ollama.ai/library/tiny-r1:latest does not support insert"},
    )
    r = http.post(
        "/api/chat", json={"model": fam_models["r1"], "tools": TOOLS, "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.json() == {"error": "registry.ollama.ai/library/tiny-r1:latest does not support tools"}
    r = http.post(
        "/api/chat",
        json={
            "model": fam_models["qwen3"],
            "format": {"type": "bogus"},
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert r.status_code == 500 and r.json()["error"].startswith("invalid format: ")


def test_tool_history_round_trip(http, fam_models):
    """A follow-up turn with the assistant's call (arguments as object, or JSON text as OpenAI
    clients send) and the tool result (tool_name / tool_call_id) renders through each template."""
    for family in ("qwen25", "qwen3", "llama31"):
        for args in ({"city": "Tokyo"}, '{"city": "Tokyo"}'):
            messages = [
                {"role": "user", "content": "weather in Tokyo?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": args}}
                    ],
                },
                {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather", "tool_call_id": "call_1"},
            ]
            r = http.post(
                "/api/chat",
                json={
                    "model": fam_models[family],
                    "messages": messages,
                    "tools": TOOLS,
                    "stream": False,
                    "think": False,
                    "options": {"num_predict": 4, "temperature": 0},
                },
            )
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
        options = (
            {"temperature": 1.0, "seed": i, "num_predict": 400} if sampled else {"temperature": 0, "num_predict": 400}
        )
        if i % 2:
            body = {"model": model, "prompt": "JSON please", "format": schema, "stream": False, "options": options}
            r = httpx.post(server.url + "/api/generate", json=body, timeout=300)
            text = r.json()["response"]
        else:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "JSON please"}],
                "format": schema,
                "stream": False,
                "options": options,
            }
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
        r = httpx.post(
            server.url + "/api/chat",
            json={
                "model": smollm,
                "messages": [{"role": "user", "content": prompt}],
                "format": schema,
                "stream": False,
                "options": {**options, "num_predict": 48},
            },
            timeout=600,
        )
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
    body = {
        "model": model,
        "prompt": "def add(a, b):\n    ",
        "suffix": "\n\nprint(add(1, 2))\n",
        "keep_alive": 1800,
        "options": {"temperature": 0.01, "top_p": 0.95, "num_predict": 8, "stop": ["\n\n"], "num_ctx": 8192},
    }
    r = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(r)
    assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])
    assert all("response" in line for line in lines)
    # the context starts with the FIM prompt built from the tokenizer's tokens
    r = httpx.post(server.url + "/api/generate", json={**body, "stream": False, "options": {"num_predict": 4}}).json()
    assert r["done"] and r["context"][:1] and "thinking" not in r
    # raw passes the prompt through untouched
    raw = httpx.post(
        server.url + "/api/generate",
        json={
            "model": model,
            "prompt": "<fim_prefix>x<fim_suffix>y<fim_middle>",
            "raw": True,
            "stream": False,
            "options": {"num_predict": 2},
        },
    ).json()
    assert raw["done"] and "context" not in raw


def test_streaming_chat_chunks_for_thinking_model(http, fam_models):
    r = http.post(
        "/api/chat",
        json={
            "model": fam_models["qwen3"],
            "messages": [{"role": "user", "content": "hi"}],
            "think": "medium",
            "tools": TOOLS,
            "logprobs": True,
            "options": {"num_predict": 6, "temperature": 0},
        },
    )
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
    r = client.chat(
        model=model, messages=[{"role": "user", "content": "weather in Tokyo?"}], tools=TOOLS, think=True, options=opts
    )
    assert r.done and r.message.role == "assistant"
    assert r.message.tool_calls is None or all(tc.function.name for tc in r.message.tool_calls)
    r = client.chat(
        model=model,
        messages=[{"role": "user", "content": "a person"}],
        think=False,
        format=SCHEMAS[0],
        options={"temperature": 0, "num_predict": 200},
    )
    validate(json.loads(r.message.content), SCHEMAS[0])
    r = client.generate(model=model, prompt="hi", think="low", options=opts)
    assert r.done and isinstance(r.response, str)
    parts = list(
        client.chat(model=model, messages=[{"role": "user", "content": "hi"}], think=True, stream=True, options=opts)
    )
    assert parts[-1].done


# --- end to end on scripted models (tests/scriptedmodel.py: next token = f(last token)) ------------


def test_scripted_tool_call_streams_whole_and_gathers(http, server, scripted):
    from ..support.scriptedmodel import WEATHER_ARGS, WEATHER_TOOL

    body = {
        "model": "scripted-tools",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "options": {"temperature": 0},
    }
    lines = ndjson(http.post("/api/chat", json=body))
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1 and not with_calls[0]["done"] and with_calls[0]["message"]["content"] == ""
    (call,) = with_calls[0]["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": WEATHER_ARGS}
    assert call["id"].startswith("call_")
    assert "".join(line["message"]["content"] for line in lines) == ""  # no call text in content
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    whole = http.post("/api/chat", json={**body, "stream": False}).json()
    assert (
        whole["message"]["content"] == "" and whole["message"]["tool_calls"][0]["function"]["arguments"] == WEATHER_ARGS
    )
    # the official client, and the follow-up turn with the result
    client = ollama.Client(host=server.url)
    r = client.chat(model="scripted-tools", messages=body["messages"], tools=[WEATHER_TOOL], options={"temperature": 0})
    (tc,) = r.message.tool_calls
    assert tc.function.name == "get_weather" and dict(tc.function.arguments) == WEATHER_ARGS
    follow = body["messages"] + [r.message, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    r2 = client.chat(model="scripted-tools", messages=follow, tools=[WEATHER_TOOL], options={"temperature": 0})
    assert r2.message.content and not r2.message.tool_calls


def test_scripted_thinking_streams_and_switches_off(http, server, scripted):
    from ..support.scriptedmodel import THINKING, THOUGHTFUL_ANSWER

    msgs = [{"role": "user", "content": "hi"}]
    lines = ndjson(http.post("/api/chat", json={"model": "scripted-think", "messages": msgs}))  # think absent: on
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    assert (thinking, content) == (THINKING + "\n", THOUGHTFUL_ANSWER)
    first_content = next(i for i, line in enumerate(lines) if line["message"]["content"])
    assert all("thinking" not in line["message"] for line in lines[first_content + 1 :])
    client = ollama.Client(host=server.url)
    r = client.chat(model="scripted-think", messages=msgs, think=True)
    assert (r.message.thinking, r.message.content) == (THINKING + "\n", THOUGHTFUL_ANSWER)
    r = client.chat(model="scripted-think", messages=msgs, think=False)
    assert (r.message.thinking, r.message.content) == (None, THOUGHTFUL_ANSWER)
    g = http.post("/api/generate", json={"model": "scripted-think", "prompt": "hi", "stream": False}).json()
    assert (g["thinking"], g["response"]) == (THINKING + "\n", THOUGHTFUL_ANSWER)


def test_scripted_json_and_fim(http, server, scripted):
    from ..support.scriptedmodel import FIM_MIDDLE, JSON_ANSWER

    r = ollama.Client(host=server.url).chat(
        model="scripted-json", messages=[{"role": "user", "content": "hi"}], format="json"
    )
    assert json.loads(r.message.content) == json.loads(JSON_ANSWER)
    # Continue's autocomplete request; the middle keeps its leading indentation
    assert ".Suffix" in http.post("/api/show", json={"name": "scripted-fim"}).json()["template"]
    body = {
        "model": "scripted-fim",
        "prompt": "def add(a, b):\n",
        "suffix": "\nprint(add(1, 2))\n",
        "keep_alive": 1800,
        "options": {"temperature": 0.01, "num_predict": 16},
    }
    lines = ndjson(http.post("/api/generate", json=body))
    assert lines[-1]["done"] and "".join(line["response"] for line in lines) == FIM_MIDDLE
