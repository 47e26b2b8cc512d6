"""Native API protocol on a live server with a tiny random model: shapes, status codes, error texts."""

from __future__ import annotations

import json
import re

import httpx
import pytest

TINY = "tiny:latest"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
RFC3339_ANY = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def ndjson(resp) -> list[dict]:
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = resp.text.split("\n")
    assert lines[-1] == "", "every NDJSON line ends with a newline"
    return [json.loads(line) for line in lines[:-1]]


# --- transport ---------------------------------------------------------------------------


def test_root_get_and_head(http):
    r = http.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    h = http.head("/")
    assert h.status_code == 200 and h.content == b""


def test_version_is_numeric_semver_at_least_0_6_4(http):
    for method in ("GET", "HEAD"):
        r = http.request(method, "/api/version")
        assert r.status_code == 200
    v = http.get("/api/version").json()["version"]
    parts = tuple(int(p) for p in v.split("."))
    assert len(parts) == 3 and parts >= (0, 6, 4)


def test_unknown_path_and_wrong_method_are_plain_text(http):
    r = http.get("/api/nothing")
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["content-type"].startswith("text/plain")
    r = http.get("/api/generate")
    assert (r.status_code, r.text) == (405, "405 method not allowed")
    r = http.head("/api/ps")
    assert r.status_code == 405


def test_trailing_and_double_slashes_are_served_directly(http, server):
    body = {"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    # absolute URLs: httpx would otherwise read "//api" as a host
    for path in ("/api/generate/", "//api/generate", "/api//generate"):
        r = http.post(server.url + path, json=body)
        assert r.status_code == 200, path
        assert r.json()["done"] is True
    assert http.get(server.url + "//api/tags").status_code == 200


def test_cors_preflight_and_disallowed_origin(http):
    r = http.options("/api/chat", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = http.get("/api/tags", headers={"Origin": "vscode-webview://abc"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "vscode-webview://abc"
    r = http.get("/api/tags", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.content == b""
    r = http.get("/api/tags", headers={"Origin": "chrome-extension://abc"})
    assert r.status_code == 403


def test_host_header_guard_on_loopback(http):
    assert http.get("/", headers={"Host": "evil.example.com"}).status_code == 403
    for host in ("localhost:11434", "127.0.0.1", "myhost.local", "10.1.2.3:80", "[::1]:11434"):
        assert http.get("/", headers={"Host": host}).status_code == 200, host


# --- bodies and errors -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_empty_body(http, path):
    r = http.post(path, content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_malformed_json(http, path):
    r = http.post(path, content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"] == "invalid character 'n' looking for beginning of value"
    r = http.post(path, content=b'{"model": "x"')
    assert r.status_code == 400 and r.json()["error"] == "unexpected EOF"


def test_body_decoded_regardless_of_content_type(http):
    r = http.post(
        "/api/generate",
        content=json.dumps({"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.json()["done"]


def test_wrong_field_type(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": 5})
    assert r.status_code == 400
    assert (
        r.json()["error"] == "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"
    )
    r = http.post("/api/chat", json={"model": TINY, "messages": "hi"})
    assert r.status_code == 400 and "ChatRequest.messages" in r.json()["error"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"stop": "x"}, 'option "stop" must be of type array'),
        ({"temperature": "0.5"}, 'option "temperature" must be of type float32'),
        ({"num_predict": "3"}, 'option "num_predict" must be of type integer'),
    ],
)
def test_option_type_errors_are_500(http, options, message):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "options": options})
    assert r.status_code == 500 and r.json() == {"error": message}


def test_unknown_and_deprecated_options_are_ignored(http):
    r = http.post(
        "/api/generate",
        json={
            "model": TINY,
            "prompt": "hi",
            "stream": False,
            "options": {"num_predict": 1, "mirostat": 2, "tfs_z": 1.0, "no_such_option": True},
        },
    )
    assert r.status_code == 200


def test_unknown_fields_ignored(http):
    r = http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "hi", "stream": False, "frobnicate": [1], "options": {"num_predict": 1}},
    )
    assert r.status_code == 200


def test_missing_model(http):
    r = http.post("/api/generate", json={"prompt": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": "model '' not found"})
    r = http.post("/api/chat", json={"messages": []})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = http.post("/api/show", json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


def test_unknown_model(http):
    r = http.post("/api/generate", json={"model": "Nope:v1", "prompt": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'Nope:v1' not found"})
    r = http.post("/api/chat", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = http.post("/api/show", json={"model": "nope"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope:latest' not found"})


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/generate", {"model": "bad name!", "prompt": "x"}),
        ("/api/chat", {"model": "foo:", "messages": []}),
        ("/api/show", {"model": "a//b"}),
    ],
)
def test_invalid_model_name(http, path, body):
    r = http.post(path, json=body)
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})


def test_keep_alive_string_without_unit(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "keep_alive": "-1"})
    assert (r.status_code, r.json()) == (400, {"error": 'time: missing unit in duration "-1"'})


def test_raw_with_system_rejected(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "raw": True, "system": "s"})
    assert (r.status_code, r.json()) == (400, {"error": "raw mode does not support template, system, or context"})


def test_top_logprobs_range(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "top_logprobs": 21})
    assert (r.status_code, r.json()) == (400, {"error": "top_logprobs must be between 0 and 20"})


def test_capability_errors(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "think": True})
    assert (r.status_code, r.json()) == (400, {"error": '"tiny:latest" does not support thinking'})
    r = http.post("/api/generate", json={"model": TINY, "prompt": "x", "think": "extreme"})
    assert r.status_code == 400 and r.json()["error"].startswith('invalid think value: "extreme"')
    r = http.post("/api/generate", json={"model": TINY, "prompt": "def f(", "suffix": "return 1"})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "registry.ollama.ai/library/tiny:latest does not support insert"},
    )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    r = http.post("/api/chat", json={"model": TINY, "messages": [{"role": "user", "content": "x"}], "tools": tools})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "registry.ollama.ai/library/tiny:latest does not support tools"},
    )
    # think:false is always accepted
    r = http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "hi", "think": False, "stream": False, "options": {"num_predict": 1}},
    )
    assert r.status_code == 200


def test_images_rejected_for_text_model(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "what is this", "images": ["aGVsbG8="]})
    assert r.status_code == 400 and "does not support vision" in r.json()["error"]
    r = http.post("/api/generate", json={"model": TINY, "prompt": "x", "images": ["data:image/png;base64,aGVsbG8="]})
    assert r.status_code == 400 and r.json()["error"].startswith("illegal base64 data at input byte")


def test_invalid_format_is_500(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "format": "yaml"})
    assert r.status_code == 500
    assert r.json()["error"] == 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'


# --- generation ----------------------------------------------------------------------------


def test_generate_stream_shape(http):
    r = http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "Why is the sky blue?", "options": {"num_predict": 5, "temperature": 0}},
    )
    assert r.status_code == 200
    chunks = ndjson(r)
    assert all(c["model"] == TINY and RFC3339_UTC.match(c["created_at"]) for c in chunks)
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final["done_reason"] == "length"
    assert final["eval_count"] == 5
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]
    assert isinstance(final["context"], list) and len(final["context"]) == final["prompt_eval_count"] + 5


def test_generate_non_stream_equals_stream(http):
    body = {"model": TINY, "prompt": "Hello there", "options": {"num_predict": 8, "temperature": 0}}
    streamed = "".join(c["response"] for c in ndjson(http.post("/api/generate", json=body)))
    single = http.post("/api/generate", json={**body, "stream": False})
    assert single.headers["content-type"] == "application/json; charset=utf-8"
    one = single.json()
    assert one["response"] == streamed and one["done"] is True and one["eval_count"] == 8


def test_greedy_is_deterministic_and_seed_reproducible(http):
    body = {
        "model": TINY,
        "prompt": "Tell me a story",
        "stream": False,
        "options": {"num_predict": 12, "temperature": 0},
    }
    a = http.post("/api/generate", json=body).json()["response"]
    b = http.post("/api/generate", json=body).json()["response"]
    assert a == b and a
    sampled = {
        "model": TINY,
        "prompt": "Tell me a story",
        "stream": False,
        "options": {"num_predict": 12, "temperature": 1.5, "top_k": 0, "top_p": 1.0, "seed": 42},
    }
    c = http.post("/api/generate", json=sampled).json()["response"]
    d = http.post("/api/generate", json=sampled).json()["response"]
    assert c == d


def test_stop_strings_end_generation_and_never_leak(http):
    base = {
        "model": TINY,
        "prompt": "Count with me",
        "stream": False,
        "options": {"num_predict": 24, "temperature": 0, "repeat_penalty": 1.3},
    }
    full = http.post("/api/generate", json=base).json()["response"]
    assert len(full) > 6
    stop = full[3:6]
    prefix = full[: full.index(stop)]
    got = http.post("/api/generate", json={**base, "options": {**base["options"], "stop": [stop, "zzzqqq"]}}).json()
    assert got["response"] == prefix and got["done_reason"] == "stop"
    streamed = ndjson(
        http.post("/api/generate", json={**base, "stream": True, "options": {**base["options"], "stop": [stop]}})
    )
    assert "".join(c["response"] for c in streamed) == prefix
    assert streamed[-1]["done_reason"] == "stop"


def test_raw_prompt_has_no_context(http):
    r = http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "abc", "raw": True, "stream": False, "options": {"num_predict": 3}},
    ).json()
    assert "context" not in r and r["done"]


def test_context_round_trip_continues_conversation(http):
    first = http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "one", "stream": False, "options": {"num_predict": 3, "temperature": 0}},
    ).json()
    second = http.post(
        "/api/generate",
        json={
            "model": TINY,
            "prompt": "two",
            "context": first["context"],
            "stream": False,
            "options": {"num_predict": 3, "temperature": 0},
        },
    ).json()
    assert second["prompt_eval_count"] > len(first["context"])
    assert second["context"][: len(first["context"])] == first["context"]


def test_num_ctx_truncates_long_chat_keeping_system_and_last(http):
    messages = (
        [{"role": "system", "content": "sys"}]
        + [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 40} for i in range(10)]
        + [{"role": "user", "content": "last"}]
    )
    r = http.post(
        "/api/chat",
        json={"model": TINY, "messages": messages, "stream": False, "options": {"num_ctx": 128, "num_predict": 2}},
    ).json()
    assert r["prompt_eval_count"] < 128
    r2 = http.post(
        "/api/chat",
        json={
            "model": TINY,
            "messages": messages,
            "stream": False,
            "truncate": False,
            "options": {"num_ctx": 128, "num_predict": 2},
        },
    )
    assert r2.status_code == 400 and r2.json()["error"] == "the input length exceeds the context length"


def test_chat_stream_shape_and_roles(http):
    r = http.post(
        "/api/chat",
        json={
            "model": TINY,
            "messages": [{"role": "System", "content": "Be brief."}, {"role": "USER", "content": "Hi"}],
            "options": {"num_predict": 4},
        },
    )
    chunks = ndjson(r)
    for c in chunks[:-1]:
        assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str)
        assert c["done"] is False
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert "context" not in final and final["eval_count"] == 4


def test_chat_model_system_inserted_unless_request_has_one(http):
    base = {"model": "tiny-sys", "stream": False, "options": {"num_predict": 1}}
    with_model_system = http.post("/api/chat", json={**base, "messages": [{"role": "user", "content": "x"}]}).json()
    own_system = http.post(
        "/api/chat", json={**base, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}
    ).json()
    plain = http.post("/api/chat", json={**base, "model": TINY, "messages": [{"role": "user", "content": "x"}]}).json()
    assert with_model_system["prompt_eval_count"] > plain["prompt_eval_count"]
    assert own_system["prompt_eval_count"] < with_model_system["prompt_eval_count"]


def test_name_alias_and_case_insensitive_model(http):
    r = http.post(
        "/api/generate", json={"name": "TINY:Latest", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    )
    assert r.status_code == 200 and r.json()["model"] == "TINY:Latest"
    r = http.post("/api/show", json={"name": "Tiny"})
    assert r.status_code == 200


# --- models, load/unload ---------------------------------------------------------------------


def test_tags(http):
    r = http.get("/api/tags")
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    models = r.json()["models"]
    names = [m["name"] for m in models]
    assert TINY in names and "tiny-sys:latest" in names
    m = next(m for m in models if m["name"] == TINY)
    assert m["model"] == TINY
    assert re.fullmatch(r"[0-9a-f]{64}", m["digest"])
    assert RFC3339_ANY.match(m["modified_at"]) and m["size"] > 0
    assert "expires_at" not in m
    assert m["details"]["family"] == "llama" and m["details"]["format"]
    times = [x["modified_at"] for x in models]
    assert times == sorted(times, reverse=True)  # newest first, as Ollama lists them
    assert http.head("/api/tags").status_code == 200


def test_show(http):
    r = http.post("/api/show", json={"model": TINY})
    assert r.status_code == 200
    s = r.json()
    assert s["model_info"]["general.architecture"] == "llama"
    assert s["model_info"]["llama.context_length"] == 2048
    assert s["capabilities"] == ["completion"]
    assert "<|im_start|>" in s["template"]
    assert s["details"]["family"] == "llama"
    assert RFC3339_ANY.match(s["modified_at"])
    assert s["modelfile"].startswith('# Modelfile generated by "ollama show"')
    s2 = http.post("/api/show", json={"model": "tiny-sys"}).json()
    assert s2["system"] == "You are terse."
    assert re.search(r"^temperature\s+0\.0$", s2["parameters"], re.M)


def test_load_unload_and_ps(http):
    r = http.post("/api/generate", json={"model": TINY, "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert TINY not in [m["name"] for m in http.get("/api/ps").json()["models"]]
    r = http.post("/api/generate", json={"model": TINY})
    body = r.json()
    assert body["done_reason"] == "load" and body["response"] == "" and body["done"] is True
    assert RFC3339_UTC.match(body["created_at"])
    ps = http.get("/api/ps").json()["models"]
    entry = next(m for m in ps if m["name"] == TINY)
    assert entry["size"] > 0 and entry["context_length"] > 0 and RFC3339_ANY.match(entry["expires_at"])
    assert "size_vram" in entry and entry["digest"]
    r = http.post("/api/chat", json={"model": TINY, "messages": [], "keep_alive": 0})
    assert r.json() == {**r.json(), "done_reason": "unload", "message": {"role": "assistant", "content": ""}}
    assert TINY not in [m["name"] for m in http.get("/api/ps").json()["models"]]
    r = http.post("/api/chat", json={"model": TINY, "messages": []})
    assert r.json()["done_reason"] == "load"
    # keep_alive 0 on a real request unloads once it is done
    http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "x", "stream": False, "keep_alive": 0, "options": {"num_predict": 1}},
    )
    assert TINY not in [m["name"] for m in http.get("/api/ps").json()["models"]]


def test_keep_alive_expiry_unloads(http):
    import time

    http.post("/api/generate", json={"model": "tiny-sys", "keep_alive": "1s"})
    assert "tiny-sys:latest" in [m["name"] for m in http.get("/api/ps").json()["models"]]
    deadline = time.time() + 10
    while time.time() < deadline and "tiny-sys:latest" in [m["name"] for m in http.get("/api/ps").json()["models"]]:
        time.sleep(0.2)
    assert "tiny-sys:latest" not in [m["name"] for m in http.get("/api/ps").json()["models"]]


def test_client_disconnect_stops_generation(http, server):
    import time

    # A long generation, abandoned after the first chunk.
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream(
            "POST", "/api/generate", json={"model": TINY, "prompt": "go", "options": {"num_predict": 100000}}
        ) as r:
            next(r.iter_lines())
    # The model's thread must be free again quickly: a short request completes promptly.
    t = time.time()
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
    assert r.status_code == 200
    assert time.time() - t < 20


def test_show_follows_a_model_recreated_or_deleted_under_the_same_name(http):
    # Lookups are remembered while the manifest file is unchanged: a new manifest must be seen.
    for system in ("First.", "Second."):
        r = http.post(
            "/api/create", json={"model": "recent-x", "from": "tiny:latest", "system": system, "stream": False}
        )
        assert r.status_code == 200, r.text
        assert http.post("/api/show", json={"model": "recent-x"}).json()["system"] == system
    assert http.request("DELETE", "/api/delete", json={"model": "recent-x"}).status_code == 200
    assert http.post("/api/show", json={"model": "recent-x"}).status_code == 404
