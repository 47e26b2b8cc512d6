"""embeddinggemma as the Ollama library serves it (a gemma3 GGUF with a pooling type) and as
llama.cpp writes it (gemma-embedding), pulled from a loopback registry; EmbeddingGemma and
ModernBERT sentence-transformers repos and a modern-bert GGUF repo pulled as hf.co/...; all answer /api/embed with the
vectors of the original checkpoint (float64 numpy reference, tests/support/tinyembed.py)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from ..support.fakehub import FakeHub
from ..support.fakeregistry import FakeRegistry
from ..support.liveserver import LiveServer
from ..support.tinyembed import (
    build_gemma_embedding,
    build_modernbert,
    gemma_ids,
    gemma_reference,
    modernbert_reference,
    write_gemma_gguf,
    write_modernbert_gguf,
)
from ..support.tinygguf import MODEL

TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog. Why is the sky blue?", "def add(a, b)"]


def _config(family: str) -> dict:
    return {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": "300M",
        "file_type": "F16",
        "architecture": "amd64",
        "os": "linux",
    }


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    gemma = build_gemma_embedding(root / "gemma", seed=11)
    mb = build_modernbert(root / "mb", seed=12, pooling="cls", bpe=True)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(mb / "tokenizer.json"))
    return {
        "gemma": (gemma, np.stack([gemma_reference(gemma, gemma_ids(gemma, t)) for t in TEXTS])),
        "mb": (mb, np.stack([modernbert_reference(mb, tok.encode(t).ids) for t in TEXTS])),
        "root": root,
    }


@pytest.fixture(scope="module")
def http(tmp_path_factory, refs):
    root = refs["root"]
    gemma = refs["gemma"][0]
    reg = FakeRegistry()
    for name, ollama in [("tiny-embeddinggemma", True), ("tiny-gemma-embedding", False)]:
        data = write_gemma_gguf(gemma, root / f"{name}.gguf", QT.F16, ollama=ollama).read_bytes()
        reg.add_model(f"library/{name}", "latest", [(MODEL, data)], _config("gemma3" if ollama else "gemma-embedding"))
    hub = FakeHub()
    hub.add_folder("org/tiny-embeddinggemma", gemma)
    hub.add_folder("org/tiny-gte-modernbert", refs["mb"][0])
    mb_gguf = write_modernbert_gguf(refs["mb"][0], root / "mb.F16.gguf", QT.F16).read_bytes()
    hub.add_repo("org/tiny-gte-modernbert-GGUF", {"tiny-gte-modernbert.F16.gguf": mb_gguf})
    srv_root = tmp_path_factory.mktemp("srv")
    srv = LiveServer(
        srv_root / "models",
        srv_root / "server.log",
        env={
            "MLXOLLAMA_REGISTRY": reg.url,
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(srv_root / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        },
    )
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c
    srv.stop()
    hub.close()
    reg.close()


@pytest.mark.parametrize(
    "name,ref,family",
    [
        ("tiny-embeddinggemma", "gemma", "gemma3"),
        ("tiny-gemma-embedding", "gemma", "gemma-embedding"),
        ("hf.co/org/tiny-embeddinggemma", "gemma", "gemma3"),
        ("hf.co/org/tiny-gte-modernbert", "mb", "modern-bert"),
        ("hf.co/org/tiny-gte-modernbert-GGUF", "mb", "modern-bert"),
    ],
)
def test_pulled_embedder_answers_embed(http, refs, name, ref, family):
    r = http.post("/api/pull", json={"model": name})
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1] == {"status": "success"}, lines

    show = http.post("/api/show", json={"model": name}).json()
    assert show["capabilities"] == ["embedding"]
    assert show["details"]["family"] == family
    assert show["model_info"][f"{show['model_info']['general.architecture']}.pooling_type"] in (1, 2)

    r = http.post("/api/embed", json={"model": name, "input": TEXTS})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"], np.float64)
    want = refs[ref][1]
    assert got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos
    # Ollama does not apply the folder's task prompts: the raw text is what is embedded
    if ref == "gemma":
        gemma = refs["gemma"][0]
        assert r.json()["prompt_eval_count"] == sum(len(gemma_ids(gemma, t)) for t in TEXTS)
