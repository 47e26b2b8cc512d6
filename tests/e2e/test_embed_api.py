"""/api/embed and /api/embeddings on the real all-MiniLM-L6-v2, against sentence-transformers' vectors.

The reference vectors come from scripts/make_embed_reference.py (torch); CI compares without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import ollama
import pytest

FIXTURE = json.loads((Path(__file__).parents[1] / "support" / "fixtures" / "embed_reference.json").read_text())


@pytest.fixture(scope="module")
def http(server, minilm):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embed_matches_sentence_transformers(http, minilm):
    r = http.post("/api/embed", json={"model": minilm, "input": FIXTURE["sentences"]})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == minilm
    vectors = body["embeddings"]
    assert len(vectors) == len(FIXTURE["sentences"]) >= 10
    for got, want in zip(vectors, FIXTURE["normalized"]):
        assert cos(got, want) >= 0.9999
        assert abs(np.linalg.norm(got) - 1.0) < 1e-5
    assert body["prompt_eval_count"] > 0 and body["total_duration"] > 0


def test_batch_equals_singles_and_keeps_order(http, minilm):
    texts = FIXTURE["sentences"][:6]
    batch = http.post("/api/embed", json={"model": minilm, "input": texts}).json()["embeddings"]
    for text, vec in zip(texts, batch):
        single = http.post("/api/embed", json={"model": minilm, "input": text}).json()["embeddings"][0]
        assert cos(single, vec) >= 0.99999


def test_legacy_embeddings_is_raw(http, minilm):
    text = FIXTURE["sentences"][0]
    r = http.post("/api/embeddings", json={"model": minilm, "prompt": text})
    vec = r.json()["embedding"]
    assert cos(vec, FIXTURE["raw"][0]) >= 0.9999
    assert abs(np.linalg.norm(vec) - np.linalg.norm(FIXTURE["raw"][0])) < 1e-3 * np.linalg.norm(FIXTURE["raw"][0])
    assert http.post("/api/embeddings", json={"model": minilm, "prompt": ""}).json() == {"embedding": []}


def test_dimensions_truncate_and_renormalise(http, minilm):
    full = http.post("/api/embed", json={"model": minilm, "input": "hello world"}).json()["embeddings"][0]
    cut = http.post("/api/embed", json={"model": minilm, "input": "hello world", "dimensions": 64}).json()[
        "embeddings"
    ][0]
    assert len(cut) == 64 and abs(np.linalg.norm(cut) - 1) < 1e-5
    assert cos(cut, full[:64]) >= 0.99999


def test_truncate_false_on_long_input(http, minilm):
    long_text = FIXTURE["sentences"][int(np.argmax(FIXTURE["untruncated_tokens"]))]
    r = http.post("/api/embed", json={"model": minilm, "input": long_text, "truncate": False})
    assert (r.status_code, r.json()) == (400, {"error": "the input length exceeds the context length"})
    assert http.post("/api/embed", json={"model": minilm, "input": long_text}).status_code == 200


def test_empty_input_loads(http, minilm):
    for empty in ("", [], None):
        body = {"model": minilm} if empty is None else {"model": minilm, "input": empty}
        r = http.post("/api/embed", json=body)
        assert r.json() == {"model": minilm, "embeddings": []}


def test_bad_input_and_unknown_model(http, minilm):
    for bad in (5, [1, 2], ["ok", 3], {"a": 1}):
        r = http.post("/api/embed", json={"model": minilm, "input": bad})
        assert (r.status_code, r.json()) == (400, {"error": "invalid input type"})
    r = http.post("/api/embed", json={"model": "nope", "input": "x"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "nope" not found, try pulling it first'})
    r = http.post("/api/embeddings", json={"model": "nope", "prompt": "x"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "nope" not found, try pulling it first'})
    assert http.post("/api/embeddings", json={"prompt": "x"}).json() == {"error": "model is required"}
    assert http.post("/api/embed", json={"input": "x"}).status_code == 404


def test_embedding_model_cannot_generate_or_chat(http, minilm):
    r = http.post("/api/generate", json={"model": minilm, "prompt": "hi"})
    assert (r.status_code, r.json()) == (400, {"error": f'"{minilm}" does not support generate'})
    r = http.post("/api/generate", json={"model": minilm})  # even a load-only request
    assert (r.status_code, r.json()) == (400, {"error": f'"{minilm}" does not support generate'})
    r = http.post("/api/chat", json={"model": minilm, "messages": [{"role": "user", "content": "hi"}]})
    assert (r.status_code, r.json()) == (400, {"error": f'"{minilm}" does not support chat'})


def test_chat_model_embeds_like_ollama_head(http):
    # Ollama (HEAD) embeds with any model: a completion model gives its pooled hidden state.
    r = http.post("/api/embed", json={"model": "tiny", "input": ["a", "b"]})
    assert r.status_code == 200
    vecs = r.json()["embeddings"]
    assert len(vecs) == 2 and len(vecs[0]) == 64 and abs(np.linalg.norm(vecs[0]) - 1) < 1e-5


def test_show_reports_embedding(http, minilm):
    s = http.post("/api/show", json={"model": minilm}).json()
    assert s["capabilities"] == ["embedding"]
    assert s["model_info"]["general.architecture"] == "bert"
    assert s["model_info"]["bert.embedding_length"] == 384
    assert "bert.pooling_type" in s["model_info"]
    tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    assert tags["all-minilm:latest"]["details"]["family"] == "bert"


def test_official_client(server, minilm):
    client = ollama.Client(host=server.url)
    r = client.embed(model=minilm, input=["first", "second"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 384
    legacy = client.embeddings(model=minilm, prompt="first")
    assert cos(legacy.embedding, r.embeddings[0]) >= 0.9999
