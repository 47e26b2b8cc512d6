"""Ollama's library embedders are GGUF `bert` / `nomic-bert` files: pulled from a loopback
registry through /api/pull, imported into the MLX encoder, they answer /api/embed with the
vectors of the original sentence-transformers checkpoint."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.convert.hf_encoder import convert_sentence_transformers
from mlxollama.engine.encoder import EncoderModel

from ..support.fakeregistry import FakeRegistry
from ..support.liveserver import LiveServer
from ..support.tinybert import build_encoder_checkpoint, write_encoder_gguf
from ..support.tinygguf import MODEL, PARAMS

TEXTS = ["Hello world, the cat sat on the mat.", "def print(x): return x", "日本語 and 中文 text"]


def _config(family: str) -> dict:
    return {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": "137K",
        "file_type": "F16",
        "architecture": "amd64",
        "os": "linux",
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (GGUF bytes, reference vectors, family) for a BERT (CLS pooling, like
    mxbai-embed-large), a NomicBERT (mean pooling, like nomic-embed-text) and an XLM-RoBERTa
    (unigram vocabulary, GGUF arch bert, like bge-m3)."""
    root = tmp_path_factory.mktemp("embedders")
    out = {}
    for name, arch, pooling in [
        ("tiny-minilm", "bert", "cls"),
        ("tiny-nomic", "nomic_bert", "mean"),
        ("tiny-bge", "xlm-roberta", "cls"),
    ]:
        hf = build_encoder_checkpoint(root / name, arch, seed=7, pooling=pooling)
        gguf = write_encoder_gguf(hf, root / f"{name}.gguf", QT.F16, ollama_keys=True)
        convert_sentence_transformers(hf, root / f"{name}-ref")
        ref, _ = EncoderModel.load(root / f"{name}-ref").embed(TEXTS, normalize=True)
        out[name] = (gguf.read_bytes(), ref, {"nomic_bert": "nomic-bert"}.get(arch, "bert"))
    return out


@pytest.fixture(scope="module")
def registry(models):
    reg = FakeRegistry(require_token=True, redirect_blobs=True)
    for name, (data, _, family) in models.items():
        reg.add_model(f"library/{name}", "latest", [(MODEL, data), (PARAMS, b'{"num_ctx":256}')], _config(family))
    reg.add_model("library/tiny-moe", "latest", [(MODEL, b"GGUF" + b"\0" * 4096)], _config("nomic-bert-moe"))
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def http(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("srv")
    srv = LiveServer(root / "models", root / "server.log", env={"MLXOLLAMA_REGISTRY": registry.url})
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c
    srv.stop()


def _pull(http, name: str) -> list[dict]:
    r = http.post("/api/pull", json={"model": name})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


@pytest.mark.parametrize("name", ["tiny-minilm", "tiny-nomic", "tiny-bge"])
def test_pulled_gguf_embedder_answers_embed(http, models, name):
    lines = _pull(http, name)
    assert lines[-1] == {"status": "success"}, lines
    assert "converting to mlx" in [l.get("status") for l in lines]

    show = http.post("/api/show", json={"model": name}).json()
    family = models[name][2]
    assert show["capabilities"] == ["embedding"]
    assert show["details"]["family"] == family
    assert show["model_info"]["general.architecture"] == family
    assert show["model_info"][f"{family}.pooling_type"] == (1 if name == "tiny-nomic" else 2)

    r = http.post("/api/embed", json={"model": name, "input": TEXTS})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"], np.float64)
    ref = models[name][1].astype(np.float64)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # /api/embed is unit length
    cos = (got * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    assert r.json()["prompt_eval_count"] > len(TEXTS)

    r = http.post("/api/generate", json={"model": name, "prompt": "hi"})
    assert r.status_code == 400 and "does not support generate" in r.json()["error"]


def test_unsupported_encoder_refused_before_download(http, registry):
    r = http.post("/api/pull", json={"model": "tiny-moe", "stream": False})
    assert r.status_code == 400
    assert 'unsupported model architecture "nomic-bert-moe"' in r.json()["error"]
    manifest = json.loads(registry.manifests[("library/tiny-moe", "latest")])
    weights = manifest["layers"][0]["digest"]
    assert not [q for q in registry.requests("GET", weights) if q.status in (200, 206)]
