"""Property-based fuzzing of every route's request schema against the live server.

Each case starts from a request the route accepts and breaks it: wrong JSON types, hostile numbers
(NaN, Infinity, 1e400, 64-bit overflow, negatives), lone UTF-16 surrogates sent as raw `\\ud800`
escapes, deep nesting, unknown fields, missing fields, empty and non-JSON bodies. A client mistake
must get a 4xx whose text carries no Python internals, never a 5xx or a hang, and the route must
still answer a valid request afterwards.

Bounded for CI: a fixed number of examples per route, derandomized so every run sends the same
requests, and every generation that could be valid is capped at a few tokens. Nothing here reaches
the network: pull, push and `from` only ever get names that fail validation.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mlxollama.store import InvalidName, ModelName

TINY = "tiny:latest"
EXAMPLES = 300  # per route: the whole file stays around a minute on two cores
MAX_TOKENS = 3
REQUEST_TIMEOUT = 60.0
# Text that must never reach a client: tracebacks, source paths, library internals.
LEAKS = ("Traceback", 'File "', "site-packages", "/work/", '.py"', "mlx.core", "object at 0x", "NoneType")


# The client mistakes Ollama itself answers with 500 (reference §1.5 and §3: option type errors,
# an invalid `format`, a quantize type it does not know): its status wins over "no 5xx".
OLLAMA_500 = re.compile(
    r'"error":"(option \\"[^"\\]+\\" must be of type |invalid format: |'
    r"unsupported quantization type |quantization is only supported for )"
)


@dataclass(frozen=True)
class Raw:
    """JSON text sent verbatim: what json.dumps cannot produce (NaN, 1e400, \\ud800, deep nesting)."""

    text: str


def to_json(value) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + to_json(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: a lone surrogate goes out as a \udXXX escape


def nested(depth: int, inner: str = "1") -> Raw:
    return Raw("[" * depth + inner + "]" * depth)


HOSTILE_NUMBERS = [
    Raw("NaN"),
    Raw("-NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1e-400"),
    Raw("-0"),
    Raw("1E+2"),
    Raw("0.0000000000000000000001"),
    2**63,
    2**63 - 1,
    2**64,
    -(2**63) - 1,
    10**40,
    -(10**40),
    -1,
    -2,
    0,
    1.5,
    -0.5,
    1e308,
    -1e308,
    5e-324,
]
# Strings that are never a valid model name, and never a path `from` would read.
INVALID_NAMES = [
    "",
    ":",
    "bad:",
    "a//b",
    "::",
    "-",
    "a b",
    "@sha256",
    "x:" + "y" * 200,
    "a/b/c/d/e",
    "\ud800",
    "\udfff\ud800",
    "..",
    "nul\u0000byte",
    "\ufeff",
]
HOSTILE_STRINGS = [
    "\ud800",
    "lone \udc00 low",
    "\udbff\udfff",
    "\u0000",
    "\ufffd",
    "x" * 5000,
    "{{ .Prompt",
    '{{ template "x" }}',
    "<|im_end|>",
    "%s%n",
    "\u202e",
    "🙂" * 50,
    "1",
    "true",
    "null",
]
HOSTILE_OTHER = [
    None,
    True,
    False,
    [],
    [None],
    [1, "a", {}],
    {},
    {"a": {"b": [1]}},
    {"\ud800": 1},
    nested(50),
    nested(900),
    nested(990, '"\\ud800"'),
    nested(3000),
    nested(20000),
    Raw('{"a":' * 600 + "1" + "}" * 600),
]
HOSTILE = st.sampled_from(HOSTILE_NUMBERS + HOSTILE_STRINGS + HOSTILE_OTHER + INVALID_NAMES)
# Names only: never a valid one, so pull, push and create's `from` cannot go to a registry.
NAME_HOSTILE = st.sampled_from(INVALID_NAMES + HOSTILE_NUMBERS[:6] + HOSTILE_OTHER)

RAW_BODIES = st.sampled_from(
    [
        b"",
        b" ",
        b"\n",
        b"null",
        b"[]",
        b"123",
        b'"text"',
        b"true",
        b"{",
        b"}",
        b"{]",
        b'{"model":',
        b"not json",
        b"\xff\xfe\xfd",
        b"\x00" * 16,
        b'{"model": "\\ud800"}',
        b'{"model": NaN}',
        b'{"a": 1e400}',
        b'{"model": "x",}',
        b'{"model": "a" "b"}',
        b"{'model': 'x'}",
        b'{"model": "tiny:latest"}{"model": "x"}',
        b"[" * 20000 + b"]" * 20000,
        b'{"x":' + b"[" * 995 + b'"\\ud800"' + b"]" * 995 + b"}",
    ]
)

OPTION_KEYS = [
    "num_predict",
    "num_ctx",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "seed",
    "stop",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "num_keep",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "use_mmap",
    "penalize_newline",
    "mirostat",
    "tfs_z",
]
FORMATS = [
    "json",
    "",
    "xml",
    {"type": "object"},
    {"type": "bogus"},
    {"$ref": "#/nope"},
    {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}},
    {"type": "string", "pattern": "(("},
    {"type": "array", "minItems": 10**12},
    {"enum": []},
    {"anyOf": []},
    {"type": "integer", "minimum": Raw("1e400")},
]
KEEP_ALIVES = ["5m", "-1", "1h2x", "", " ", "-5m", "9999999999h", "1e400s", "0.5", "m", "5", 1e308, -1, Raw("1e400")]
TOOLS = [
    [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    [{"type": "function"}],
    [{"function": None}],
    [{"type": "function", "function": {"name": 1}}],
    ["x"],
]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    base: dict | None  # a body the route accepts; None for routes without one
    fields: tuple[str, ...] = ()
    name_fields: tuple[str, ...] = ()  # only ever invalid names (no network, no path reads)
    options: bool = False
    nested_list: str | None = None  # a list field whose first object is fuzzed too
    nested_fields: tuple[str, ...] = ()
    extra: dict | None = None  # field -> route-specific hostile candidates


def msg_fields() -> tuple[str, ...]:
    return ("role", "content", "images", "tool_calls", "thinking", "tool_name", "tool_call_id", "name")


ROUTES = [
    Route(
        "POST",
        "/api/generate",
        {"model": TINY, "prompt": "hi", "stream": False},
        (
            "model",
            "prompt",
            "suffix",
            "system",
            "template",
            "context",
            "stream",
            "raw",
            "format",
            "images",
            "keep_alive",
            "think",
            "logprobs",
            "top_logprobs",
            "truncate",
            "shift",
        ),
        options=True,
        extra={
            "format": FORMATS,
            "keep_alive": KEEP_ALIVES,
            "context": [[1, 2, 3], [-1], [10**12], [Raw("NaN")]],
            "images": [["!!"], ["aGk="], [""]],
        },
    ),
    Route(
        "POST",
        "/api/chat",
        {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        ("model", "messages", "tools", "format", "stream", "keep_alive", "think", "logprobs", "top_logprobs"),
        options=True,
        nested_list="messages",
        nested_fields=msg_fields(),
        extra={
            "format": FORMATS,
            "tools": TOOLS,
            "keep_alive": KEEP_ALIVES,
            "role": ["system", "assistant", "tool", "bogus", ""],
            "messages": [[], [{}], [{"role": "user"}], [{"role": "assistant", "content": "x"}]],
        },
    ),
    Route(
        "POST",
        "/api/embed",
        {"model": TINY, "input": "hi"},
        ("model", "input", "truncate", "keep_alive", "dimensions"),
        options=True,
        extra={
            "input": [[], [""], ["a", 1], [[1, 2]], "", ["x"] * 300],
            "dimensions": [0, -1, 10**9, 3],
            "keep_alive": KEEP_ALIVES,
        },
    ),
    Route(
        "POST",
        "/api/embeddings",
        {"model": TINY, "prompt": "hi"},
        ("model", "prompt", "keep_alive"),
        options=True,
        extra={"keep_alive": KEEP_ALIVES, "prompt": ["", " "]},
    ),
    Route("POST", "/api/show", {"model": TINY}, ("model", "verbose", "system", "template", "name")),
    Route("GET", "/api/tags", None),
    Route("GET", "/api/ps", None),
    Route("GET", "/v1/models", None),
    Route("POST", "/api/copy", {"source": TINY, "destination": "fuzz-copy"}, ("source", "destination")),
    Route("DELETE", "/api/delete", {"model": "fuzz-missing"}, ("model", "name")),
    Route("POST", "/api/pull", {"model": "bad:", "stream": False}, ("stream", "insecure"), ("model", "name")),
    Route("POST", "/api/push", {"model": "a//b", "stream": False}, ("stream", "insecure"), ("model", "name")),
    Route(
        "POST",
        "/api/create",
        {"model": "fuzz-created", "from": TINY, "system": "S", "stream": False},
        (
            "model",
            "system",
            "template",
            "license",
            "parameters",
            "messages",
            "stream",
            "quantize",
            "files",
            "adapters",
            "modelfile",
        ),
        ("from",),
        extra={
            "parameters": [{"temperature": Raw("NaN")}, {"stop": [1]}, {"bogus": 1}, {"num_ctx": -1}],
            "files": [{"a.gguf": "sha256:" + "0" * 64}, {"../x": "bad"}, {"": ""}],
            "quantize": ["q4_K_M", "q8_0", "bogus", "4bit"],
            "template": ["{{ .Prompt", "{{ end }}"],
            "license": [["a", 1], "MIT"],
        },
    ),
    Route(
        "POST",
        "/v1/chat/completions",
        {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS},
        (
            "model",
            "messages",
            "stream",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "frequency_penalty",
            "presence_penalty",
            "response_format",
            "tools",
            "tool_choice",
            "stream_options",
            "n",
            "logprobs",
            "top_logprobs",
            "reasoning_effort",
            "reasoning",
        ),
        nested_list="messages",
        nested_fields=msg_fields(),
        extra={
            "response_format": [
                {"type": "json_object"},
                {"type": "json_schema"},
                {"type": "bogus"},
                {"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}},
            ],
            "content": [
                [{"type": "text"}],
                [{"type": "image_url", "image_url": {"url": "data:x"}}],
                [{"type": "bogus"}],
                [{"type": "input_audio", "input_audio": {}}],
            ],
            "tools": TOOLS,
            "stream_options": [{"include_usage": True}, {"include_usage": "x"}],
        },
    ),
    Route(
        "POST",
        "/v1/completions",
        {"model": TINY, "prompt": "hi", "max_tokens": MAX_TOKENS},
        (
            "model",
            "prompt",
            "stream",
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "suffix",
            "echo",
            "logprobs",
            "frequency_penalty",
            "presence_penalty",
            "stream_options",
            "n",
            "best_of",
        ),
    ),
    Route(
        "POST",
        "/v1/embeddings",
        {"model": TINY, "input": "hi"},
        ("model", "input", "encoding_format", "dimensions", "user"),
        extra={"input": [[1, 2, 3], [[1, 2]], [], [""]], "encoding_format": ["base64", "float", "bogus"]},
    ),
    Route(
        "POST",
        "/v1/messages",
        {"model": TINY, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "hi"}]},
        (
            "model",
            "max_tokens",
            "messages",
            "system",
            "stream",
            "temperature",
            "top_p",
            "top_k",
            "stop_sequences",
            "tools",
            "tool_choice",
            "thinking",
            "metadata",
        ),
        nested_list="messages",
        nested_fields=("role", "content"),
        extra={
            "content": [
                [{"type": "text"}],
                [{"type": "image", "source": {}}],
                [{"type": "tool_result"}],
                [{"type": "bogus"}],
                [{"type": "text", "text": 1}],
            ],
            "thinking": [{"type": "enabled"}, {"type": "enabled", "budget_tokens": -1}, {"type": "bogus"}],
            "system": [[{"type": "text", "text": "s"}], [{"type": "text"}], [1]],
        },
    ),
]
BLOB_DIGESTS = [
    "sha256:" + "0" * 64,
    "sha256-" + "1" * 64,
    "sha256:" + "g" * 64,
    "sha256:abc",
    "md5:" + "0" * 32,
    "sha256:" + "A" * 64,
    "%00",
    "..%2F..%2Fetc",
    "sha256:" + "0" * 65,
    "x" * 3000,
    "%ED%A0%80",
]
UNKNOWN_FIELDS = ["zzz_unknown", "__proto__", "Model", "MODEL", "model ", "\ud800", "", "options.num_predict"]


def _set_path(body: dict, path: tuple, value) -> None:
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@st.composite
def json_cases(draw, route: Route):
    body = json.loads(json.dumps(route.base))  # a private copy
    for _ in range(draw(st.integers(1, 3))):
        choices = ["field", "unknown", "drop"]
        if route.name_fields:
            choices.append("name")
        if route.options:
            choices += ["option", "option"]
        if (
            route.nested_list
            and isinstance(body.get(route.nested_list), list)
            and body[route.nested_list]
            and isinstance(body[route.nested_list][0], dict)
        ):
            choices.append("nested")
        kind = draw(st.sampled_from(choices))
        extra = route.extra or {}
        if kind == "field" and route.fields:
            key = draw(st.sampled_from(route.fields))
            pool = extra.get(key, [])
            body[key] = draw(st.sampled_from(pool) | HOSTILE if pool else HOSTILE)
        elif kind == "name":
            body[draw(st.sampled_from(route.name_fields))] = draw(NAME_HOSTILE)
        elif kind == "unknown":
            key = draw(st.sampled_from(UNKNOWN_FIELDS))
            # Go matches keys without regard to case: a `MODEL` may be read as `model` one day.
            near_name = key.strip().lower() in route.name_fields
            body[key] = draw(NAME_HOSTILE if near_name else HOSTILE)
        elif kind == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif kind == "option":
            options = body.get("options")
            if not isinstance(options, dict):
                options = body["options"] = {}
            options[draw(st.sampled_from(OPTION_KEYS))] = draw(HOSTILE)
        elif kind == "nested":
            key = draw(st.sampled_from(route.nested_fields))
            pool = extra.get(key, [])
            _set_path(body, (route.nested_list, 0, key), draw(st.sampled_from(pool) | HOSTILE if pool else HOSTILE))
    if draw(st.booleans()) and "stream" in route.fields:
        body.setdefault("stream", True)
    return bound(route, body)


def _could_run_long(value) -> bool:
    """A length cap the server would accept that lets a generation run past a few tokens."""
    if value is None:
        return True
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and not (isinstance(value, int) and 0 < value <= MAX_TOKENS)


def bound(route: Route, body: dict) -> dict:
    """Caps every generation that could succeed at a few tokens: the fuzzer hunts errors, not essays."""
    if route.options:
        options = body.get("options")
        if options is None:
            body["options"] = options = {}
        if isinstance(options, dict) and _could_run_long(options.get("num_predict")):
            options["num_predict"] = MAX_TOKENS
    if route.path.startswith("/v1/") and route.path != "/v1/embeddings":
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if (key == "max_tokens" or value is not None) and _could_run_long(value):
                body[key] = MAX_TOKENS
    return body


def route_cases(route: Route):
    if route.base is None:
        return st.builds(
            lambda q, b: ("query", q, b),
            st.sampled_from(["", "?x=1", "?model=%ED%A0%80", "?" + "a" * 4000, "?%zz", "?stream=true&stream=false"]),
            st.sampled_from([None, b"", b"{", b'{"model": NaN}']),
        )
    raw = RAW_BODIES.map(lambda content: ("body", content))
    shaped = json_cases(route).map(lambda body: ("body", to_json(body).encode()))
    return st.one_of(raw, shaped, shaped, shaped)


def read_reply(resp: httpx.Response) -> tuple[str, list[str]]:
    """The whole body (bounded by the request timeout) and any error texts streamed inside a 200."""
    text = resp.read().decode("utf-8", errors="replace")
    streamed_errors = []
    if resp.status_code == 200:
        for line in text.splitlines():
            line = line.removeprefix("data: ").strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                streamed_errors.append(f"malformed line: {line[:200]}")
                continue
            if isinstance(obj, dict) and "error" in obj:
                streamed_errors.append(json.dumps(obj["error"])[:300])
    return text, streamed_errors


def probe(http: httpx.Client, method: str, path: str, content: bytes | None) -> str | None:
    """Sends one request; returns a description of what is wrong with the answer, or None."""
    headers = {"content-type": "application/json"} if content is not None else {}
    started = time.monotonic()
    try:
        with http.stream(method, path, content=content, headers=headers, timeout=REQUEST_TIMEOUT) as resp:
            text, streamed_errors = read_reply(resp)
    except httpx.HTTPError as e:
        return f"no answer after {time.monotonic() - started:.1f}s ({type(e).__name__}: {e})"
    if resp.status_code >= 500 and not OLLAMA_500.search(text):
        return f"HTTP {resp.status_code}: {text[:300]}"
    leaked = [w for w in LEAKS if w in text]
    if leaked:
        return f"HTTP {resp.status_code} leaks {leaked}: {text[:300]}"
    if resp.status_code == 200 and streamed_errors and path != "/api/create":
        return f"HTTP 200 with a streamed error: {streamed_errors[0]}"
    return None


def show_body(content: bytes | None) -> str:
    if content is None:
        return "(no body)"
    shown = content.decode("utf-8", errors="backslashreplace")
    return shown if len(shown) <= 400 else shown[:200] + f"...({len(shown)} chars)..." + shown[-100:]


VALID = {
    "/api/generate": ("POST", {"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}),
    "/api/chat": (
        "POST",
        {
            "model": TINY,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 2},
        },
    ),
    "/api/embed": ("POST", {"model": TINY, "input": "hi"}),
    "/api/embeddings": ("POST", {"model": TINY, "prompt": "hi"}),
    "/api/show": ("POST", {"model": TINY}),
    "/api/copy": ("POST", {"source": TINY, "destination": "fuzz-valid-copy"}),
    "/api/delete": ("DELETE", {"model": "fuzz-valid-copy"}),
    "/api/pull": ("POST", {"model": "bad:"}),  # the valid request we can make offline: a clean 400
    "/api/push": ("POST", {"model": ""}),
    "/api/create": ("POST", {"model": "fuzz-valid-created", "from": TINY, "system": "S", "stream": False}),
    "/v1/chat/completions": ("POST", {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    "/v1/completions": ("POST", {"model": TINY, "prompt": "hi", "max_tokens": 2}),
    "/v1/embeddings": ("POST", {"model": TINY, "input": "hi"}),
    "/v1/messages": ("POST", {"model": TINY, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
}
VALID_STATUS = {"/api/pull": 400, "/api/push": 400}


def assert_still_serving(http: httpx.Client, path: str) -> None:
    method, body = VALID.get(path, ("GET", None))
    if path == "/api/delete":  # something to delete
        http.post("/api/copy", json={"source": TINY, "destination": "fuzz-valid-copy"}, timeout=REQUEST_TIMEOUT)
    r = http.request(method, path, json=body, timeout=REQUEST_TIMEOUT)
    assert r.status_code == VALID_STATUS.get(path, 200), f"{method} {path} after fuzzing: {r.status_code} {r.text}"
    r = http.post("/api/generate", json=VALID["/api/generate"][1], timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200 and r.json()["done"], f"generate after fuzzing {path}: {r.status_code} {r.text}"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as c:
        before = {m["name"] for m in c.get("/api/tags").json()["models"]}
        yield c
        # Copies and creates the fuzzer made must not leak into other tests' listings.
        for m in c.get("/api/tags").json()["models"]:
            if m["name"] not in before:
                c.request("DELETE", "/api/delete", json={"model": m["name"]})


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # every finding is collected, none shrunk
    suppress_health_check=list(HealthCheck),
)


def test_invalid_names_really_are_invalid():
    # The fuzzer's promise of no network rests on this: none of these may reach a registry.
    for text in INVALID_NAMES:
        with pytest.raises(InvalidName):
            ModelName.parse(text.replace("\ud800", "\ufffd").replace("\udfff", "\ufffd"))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_fuzz_route(http, route: Route):
    findings: dict[str, str] = {}

    @FUZZ_SETTINGS
    @given(case=route_cases(route))
    def run(case):
        if case[0] == "query":
            _, query, content = case
            problem = probe(http, route.method, route.path + query, content)
            shown = f"{route.method} {route.path}{query[:80]} body={show_body(content)}"
        else:
            _, content = case
            problem = probe(http, route.method, route.path, content)
            shown = f"{route.method} {route.path} body={show_body(content)}"
        if problem:
            # One line per kind of failure: quoted names and numbers vary, the fault does not.
            kind = re.sub(r'\\".*?\\"|\d+', "_", problem[:160])
            findings.setdefault(kind, f"{shown}\n    -> {problem}")

    run()
    try:
        assert_still_serving(http, route.path)
    except (AssertionError, httpx.HTTPError) as e:
        findings["still serving"] = f"a valid request after the fuzzing failed: {e}"
    assert not findings, f"{len(findings)} distinct failures:\n" + "\n".join(findings.values())


@FUZZ_SETTINGS
@given(
    digest=st.sampled_from(BLOB_DIGESTS),
    method=st.sampled_from(["HEAD", "POST"]),
    body=st.sampled_from([b"", b"x", b"\x00" * 1024]),
)
def test_fuzz_blobs(http, digest, method, body):
    problem = probe(http, method, "/api/blobs/" + digest, body if method == "POST" else None)
    assert problem is None, f"{method} /api/blobs/{digest[:80]} body={body[:20]!r}: {problem}"


def test_fuzz_model_path_of_v1_models(http):
    for tail in ["nope", "%ED%A0%80", "a" * 3000, "..%2F..", "tiny:latest/extra", "%00"]:
        problem = probe(http, "GET", "/v1/models/" + tail, None)
        assert problem is None, f"GET /v1/models/{tail[:80]}: {problem}"
    assert http.get("/v1/models/" + TINY).status_code == 200
