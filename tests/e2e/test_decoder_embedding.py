"""Decoder-family embedding models (Qwen3-Embedding style): a sentence-transformers folder around an
mlx-lm architecture, last-token pooled, served through the same /api/embed as BERT models."""

from __future__ import annotations

import json

import httpx
import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import load

from mlxollama.convert.create import convert_path
from mlxollama.store import Store

from ..support.tinyhf import build_hf_checkpoint

NAME = "tiny-qwen3-embed:latest"
TEXTS = ["what is the capital of France?", "def add(a, b): return a + b", "Grüße aus Köln 🙂"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = build_hf_checkpoint(tmp_path_factory.mktemp("qwen3emb"), "qwen3", dtype="float32")
    (src / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 256,
                "pooling_mode_lasttoken": True,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_cls_token": False,
                "include_prompt": True,
            }
        )
    )
    return src


@pytest.fixture(scope="module")
def served(server, models_dir, source):
    convert_path(source, NAME, store=Store(models_dir))
    return server


def reference(source, text: str) -> np.ndarray:
    model, tokenizer = load(str(source))
    ids = tokenizer.encode(text, add_special_tokens=True)
    vec = np.array(model.model(mx.array([ids]))[0, -1].astype(mx.float32))
    return vec / np.linalg.norm(vec)


def test_last_token_pooled_and_normalised(served, source):
    r = httpx.post(served.url + "/api/embed", json={"model": NAME, "input": TEXTS}, timeout=120)
    assert r.status_code == 200, r.text
    vectors = r.json()["embeddings"]
    assert len(vectors) == len(TEXTS)
    for text, got in zip(TEXTS, vectors):
        want = reference(source, text)
        got = np.asarray(got)
        assert got @ want / np.linalg.norm(got) >= 0.9999
    # different texts give different vectors (the pooling really looks at the text)
    assert np.asarray(vectors[0]) @ np.asarray(vectors[1]) < 0.999


def test_reported_as_an_embedding_model(served):
    show = httpx.post(served.url + "/api/show", json={"model": NAME}, timeout=60).json()
    assert show["capabilities"] == ["embedding"]
    assert show["model_info"]["qwen3.pooling_type"] == 3  # llama.cpp's LAST
    r = httpx.post(served.url + "/api/generate", json={"model": NAME, "prompt": "hi"}, timeout=60)
    assert (r.status_code, r.json()) == (400, {"error": f'"{NAME}" does not support generate'})
