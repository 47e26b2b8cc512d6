"""Bodies a careless or hostile client sends: each gets a clear 4xx (or Go's lenient answer), the
server keeps serving, and an abandoned blob upload leaves nothing behind."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

TINY = "tiny:latest"


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def post_raw(http, path: str, text: str) -> httpx.Response:
    return http.post(path, content=text.encode("utf-8", "surrogatepass"), headers={"content-type": "application/json"})


def test_a_lone_surrogate_is_replaced_as_go_does(http):
    # Go's decoder turns an invalid UTF-16 escape into U+FFFD and answers normally.
    body = '{"model": "%s", "prompt": "hi \\ud800 there", "stream": false, "options": {"num_predict": 2}}' % TINY
    r = post_raw(http, "/api/generate", body)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True
    chat = (
        '{"model": "%s", "stream": false, "options": {"num_predict": 2}, '
        '"messages": [{"role": "user", "content": "\\udfff"}]}' % TINY
    )
    assert post_raw(http, "/api/chat", chat).status_code == 200


def test_invalid_utf8_bytes_are_replaced_as_go_does(http):
    body = b'{"model": "tiny:latest", "prompt": "\xff\xfe", "stream": false, "options": {"num_predict": 1}}'
    r = http.post("/api/generate", content=body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path", ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/v1/chat/completions", "/v1/messages"]
)
def test_deep_nesting_is_a_400(http, path):
    body = '{"model": "%s", "x": %s1%s}' % (TINY, "[" * 20000, "]" * 20000)
    r = post_raw(http, path, body)
    assert r.status_code == 400, r.text
    assert "exceeded max depth" in r.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_a_400(http, literal):
    body = '{"model": "%s", "prompt": "hi", "stream": false, "options": {"temperature": %s}}' % (TINY, literal)
    r = post_raw(http, "/api/generate", body)
    assert r.status_code == 400, r.text
    assert "Traceback" not in r.text and "mlx" not in r.text.lower()


def test_an_oversized_json_body_is_refused_before_it_is_read(server):
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: %d\r\n\r\n{"model":' % (1 << 40)
        )
        reply = s.recv(4096).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply


def test_the_server_still_answers_after_all_of_it(http):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"]


def test_an_abandoned_blob_upload_leaves_no_temp_file(server, models_dir):
    digest = "sha256:" + "ab" * 32
    blobs = models_dir / "blobs"
    before = {p.name for p in blobs.iterdir()}
    parts = urlsplit(server.url)
    s = socket.create_connection((parts.hostname, parts.port), timeout=30)
    s.sendall(f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {64 << 20}\r\n\r\n".encode())
    s.sendall(b"\0" * (4 << 20))
    deadline = time.time() + 10
    while time.time() < deadline and not ({p.name for p in blobs.iterdir()} - before):
        time.sleep(0.05)
    assert {p.name for p in blobs.iterdir()} - before, "the upload never reached the store"
    s.close()  # the client dies mid-upload
    deadline = time.time() + 10
    while time.time() < deadline and ({p.name for p in blobs.iterdir()} - before):
        time.sleep(0.1)
    assert not ({p.name for p in blobs.iterdir()} - before), "a temp file outlived its upload"
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 404


@pytest.mark.parametrize(
    "template, text",
    [
        ("{{ .Prompt.upper }}", "can't evaluate field upper"),
        ("{{ range 4000 }}{{ range 4000 }}{{ range 4000 }}x{{ end }}{{ end }}{{ end }}", "exceeded its limit"),
    ],
)
def test_a_hostile_request_template_is_a_400_and_the_server_keeps_answering(http, template, text):
    r = http.post("/api/generate", json={"model": TINY, "prompt": "hi", "template": template, "stream": False})
    assert r.status_code == 400, r.text
    assert text in r.json()["error"] and "0x" not in r.text
    assert http.get("/").status_code == 200


def test_an_empty_keep_alive_string_is_go_s_duration_error(http):
    for path in ("/api/generate", "/api/embed"):
        r = http.post(path, json={"model": TINY, "prompt": "hi", "input": "hi", "keep_alive": ""})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == 'time: invalid duration ""'


def test_empty_strings_embed_without_internals(http):
    r = http.post("/api/embed", json={"model": TINY, "input": ["a", ""]})
    assert r.status_code == 200, r.text
    vectors = r.json()["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1])


def test_anthropic_text_of_another_type_is_a_400(http):
    r = http.post(
        "/v1/messages",
        json={"model": TINY, "max_tokens": 2, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
    )
    assert r.status_code == 400, r.text
    assert "cannot unmarshal number" in r.text


def test_a_lone_surrogate_inside_deep_nesting_is_fine(http):
    body = '{"model": "%s", "s": "\\ud800", "n": %s"\\udfff"%s}' % (TINY, "[" * 600, "]" * 600)
    r = post_raw(http, "/api/show", body)
    assert r.status_code == 200, r.text


def test_an_unreachable_registry_is_reported_without_python_internals(http):
    from ..support.liveserver import free_port

    r = http.post(
        "/api/pull",
        json={"model": f"127.0.0.1:{free_port()}/library/nothing:latest", "insecure": True, "stream": False},
    )
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error.startswith('pull model manifest: Get "http://127.0.0.1:'), error
    assert "Errno" not in error and "[" not in error
