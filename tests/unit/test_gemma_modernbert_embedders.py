"""EmbeddingGemma (sentence-transformers folder; llama.cpp's gemma-embedding and Ollama's
gemma3-with-pooling GGUFs) and ModernBERT sentence-transformers folders: tiny random
checkpoints imported and run on MLX, against float64 numpy forwards of the same checkpoints
written from transformers' modeling code (tests/support/tinyembed.py; torch and
sentence-transformers are not installed, so those forwards are the reference)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.convert.create import ManageError, convert_path
from mlxollama.convert.gguf_encoder import import_gguf_encoder, read_architecture
from mlxollama.convert.hf_encoder import convert_sentence_transformers
from mlxollama.engine.encoder import EncoderModel, UnsupportedEncoder
from mlxollama.engine.encoder_gemma import GemmaEmbeddingModel
from mlxollama.store import Store

from ..support.tinyembed import (
    build_gemma_embedding,
    build_modernbert,
    gemma_ids,
    gemma_reference,
    modernbert_reference,
    write_gemma_gguf,
)

# Lengths from 4 to ~40 tokens: past the tiny models' sliding bands (4 each side), batched
# together so padding masks matter.
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. Why is the sky blue? Paris is the capital of France.",
    "def add(a, b):\n    return a + b",
    "Ünïcödé text, emoji 🙂 and CJK 你好",
    "what is an embedding? a vector",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("gemma")
    hf = build_gemma_embedding(root / "hf", seed=1)
    ref = np.stack([gemma_reference(hf, gemma_ids(hf, t, 64)) for t in TEXTS])
    # different texts are far apart next to the 1e-4 bar: the comparison can fail
    off = _cos(ref[:, None], ref[None, :])[~np.eye(len(TEXTS), dtype=bool)]
    assert off.max() < 0.99
    return hf, ref


def test_gemma_folder_matches_reference(gemma, tmp_path):
    hf, ref = gemma
    res = convert_sentence_transformers(hf, tmp_path / "out")
    assert (res.architecture, res.pooling, res.normalize, res.embedding_length) == ("gemma3", "mean", True, 64)
    assert res.model_info["gemma3.pooling_type"] == 1
    model = GemmaEmbeddingModel.load(tmp_path / "out")
    assert model.max_length == 64 and model.embedding_length == 64
    assert model.count_tokens(TEXTS) == [len(gemma_ids(hf, t)) for t in TEXTS]
    got, tokens = model.embed(TEXTS, normalize=True)
    assert tokens == sum(len(gemma_ids(hf, t, 64)) for t in TEXTS)
    cos = _cos(got, ref)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # one at a time (no padding) gives the same vectors as the padded batch
    single = np.concatenate([model.embed([t], normalize=True)[0] for t in TEXTS])
    np.testing.assert_allclose(single, got, atol=2e-5)


def test_gemma_band_is_symmetric_and_half_the_stored_window(gemma, tmp_path):
    """A causal run, or a band of the whole stored window, gives other vectors: the reference
    would not be met by either (checked on the longest text, 20+ tokens past the band)."""
    hf, ref = gemma
    out = tmp_path / "wide"
    convert_sentence_transformers(hf, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["sliding_window"] *= 2
    (out / "config.json").write_text(json.dumps(cfg))
    wide, _ = GemmaEmbeddingModel.load(out).embed(TEXTS[1:2], normalize=True)
    assert _cos(wide, ref[1:2]).min() < 0.9999


@pytest.mark.parametrize("qtype,floor", [(QT.F16, 0.9999), (QT.Q8_0, 0.999)], ids=["F16", "Q8_0"])
@pytest.mark.parametrize("ollama", [False, True], ids=["llama.cpp", "ollama"])
def test_gemma_gguf_matches_reference(gemma, tmp_path, qtype, floor, ollama):
    hf, ref = gemma
    path = write_gemma_gguf(hf, tmp_path / "m.gguf", qtype, ollama=ollama)
    assert read_architecture(path) == "gemma-embedding"  # routes Ollama's gemma3 + pooling_type to the encoder
    res = import_gguf_encoder(path, tmp_path / "out")
    assert res.architecture == ("gemma3" if ollama else "gemma-embedding")
    assert (res.pooling, res.normalize, res.embedding_length, res.context_length) == ("mean", True, 64, 2048)
    info = json.loads((tmp_path / "out" / "model_info.json").read_text())
    assert info[f"{res.architecture}.pooling_type"] == 1
    model = GemmaEmbeddingModel.load(tmp_path / "out")
    for text in TEXTS:  # the GGUF vocabulary gives the HF tokenizer's ids, <bos> and <eos> included
        assert model._tok_full.encode(text).ids == gemma_ids(hf, text), text
    got, _ = model.embed(TEXTS, normalize=True)
    cos = _cos(got, ref)
    assert cos.min() >= floor, cos


def test_gemma_served_through_convert_and_store(gemma, tmp_path):
    """`mlxollama convert DIR` / /api/create path: the stored model is an embedder that the
    engine's LoadedEmbedder runs with the Gemma encoder."""
    from mlxollama.engine.embedder import LoadedEmbedder

    hf, ref = gemma
    store = Store(tmp_path / "store")
    stored = convert_path(hf, "tiny-embeddinggemma", store=store)
    cfg = stored.read_config()
    assert cfg["capabilities"] == ["embedding"] and cfg["model_family"] == "gemma3"
    loaded = LoadedEmbedder(store.materialize(stored, tmp_path / "run"))
    assert isinstance(loaded.encoder, GemmaEmbeddingModel)
    got, _ = loaded.encoder.embed(TEXTS[:2], normalize=True)
    assert _cos(got, ref[:2]).min() >= 0.9999


def test_gemma_dense_bias_and_refusals(tmp_path):
    hf = build_gemma_embedding(tmp_path / "hf", seed=2, dense_bias=True)
    convert_sentence_transformers(hf, tmp_path / "out")
    got, _ = GemmaEmbeddingModel.load(tmp_path / "out").embed(TEXTS[:2], normalize=True)
    ref = np.stack([gemma_reference(hf, gemma_ids(hf, t)) for t in TEXTS[:2]])
    assert _cos(got, ref).min() >= 0.9999

    dense_cfg = hf / "2_Dense" / "config.json"
    dense_cfg.write_text(json.dumps({**json.loads(dense_cfg.read_text()), "activation_function": "torch.nn.GELU"}))
    with pytest.raises(UnsupportedEncoder, match="Dense activation"):
        convert_sentence_transformers(hf, tmp_path / "out2")
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
    with pytest.raises(UnsupportedEncoder, match="rope type 'yarn'"):
        convert_sentence_transformers(hf, tmp_path / "out3")


# --------------------------------------------------------------------------- ModernBERT

MB_TEXTS = [
    "Hello world, the cat sat on the mat.",
    "def print(x): return x  # code",
    "naive cafe street " * 6,
    "日本語 and 中文 text",
]


@pytest.mark.parametrize(
    "pooling,norm_bias,mlm", [("cls", False, False), ("mean", True, True)], ids=["gte-cls", "embed-mean-mlm"]
)
def test_modernbert_folder_matches_reference(tmp_path, pooling, norm_bias, mlm):
    hf = build_modernbert(tmp_path / "hf", seed=4, pooling=pooling, norm_bias=norm_bias, mlm_prefix=mlm)
    res = convert_sentence_transformers(hf, tmp_path / "out")
    assert (res.architecture, res.pooling, res.normalize, res.embedding_length) == ("modern-bert", pooling, True, 64)
    assert res.model_info["modern-bert.pooling_type"] == (2 if pooling == "cls" else 1)
    model = EncoderModel.load(tmp_path / "out")
    assert model.max_length == 128
    got, _ = model.embed(MB_TEXTS, normalize=True)  # one padded batch
    tok = model._tok_full
    ref = np.stack([modernbert_reference(hf, tok.encode(t).ids) for t in MB_TEXTS])
    cos = _cos(got, ref)
    assert cos.min() >= 0.9999, cos
    off = _cos(ref[:, None], ref[None, :])[~np.eye(len(MB_TEXTS), dtype=bool)]
    assert off.max() < 0.99


def test_modernbert_through_convert_path(tmp_path):
    hf = build_modernbert(tmp_path / "hf", seed=5)
    store = Store(tmp_path / "store")
    stored = convert_path(hf, "tiny-gte-modernbert", store=store)
    cfg = stored.read_config()
    assert cfg["capabilities"] == ["embedding"] and cfg["model_family"] == "modern-bert"
    model = EncoderModel.load(store.materialize(stored, tmp_path / "run"))
    got, _ = model.embed(MB_TEXTS[:1], normalize=True)
    want = modernbert_reference(hf, model._tok_full.encode(MB_TEXTS[0]).ids)
    assert _cos(got, want[None]).min() >= 0.9999


def test_modernbert_unsupported_options_refused(tmp_path):
    hf = build_modernbert(tmp_path / "hf", seed=6)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "hidden_activation": "mish"}))
    store = Store(tmp_path / "store")
    with pytest.raises(ManageError, match="hidden_activation='mish'") as e:
        convert_path(hf, "bad-modernbert", store=store)
    assert e.value.status == 400 and str(tmp_path) not in str(e.value)
    shutil.rmtree(hf)


def test_gemma_window_and_refusals_without_paths(gemma, tmp_path):
    """truncate=False past the window is Ollama's error; truncate=True cuts to the window with
    <eos> kept; a GGUF tensor with no place, or a pooling type we do not run, is refused by name."""
    from mlxollama.convert.gguf_encoder import UnsupportedEncoderGGUF
    from mlxollama.engine.encoder import InputTooLong

    hf, _ = gemma
    convert_sentence_transformers(hf, tmp_path / "out")
    model = GemmaEmbeddingModel.load(tmp_path / "out")
    long = "the quick brown fox " * 40
    with pytest.raises(InputTooLong, match="the input length exceeds the context length"):
        model.embed([long], truncate=False)
    got, tokens = model.embed([long])
    assert tokens == 64
    want = gemma_reference(hf, gemma_ids(hf, long, 64))
    assert gemma_ids(hf, long, 64)[-1] == 1 and _cos(got, want[None]).min() >= 0.9999

    import gguf as g

    src = write_gemma_gguf(hf, tmp_path / "m.gguf")
    reader = g.GGUFReader(str(src))

    def rewrite(dst, extra_tensor=None, pooling=None):
        w = g.GGUFWriter(str(dst), "gemma-embedding")
        for name, f in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue
            if name == "gemma-embedding.pooling_type" and pooling is not None:
                w.add_uint32(name, pooling)
            elif f.types[0] == g.GGUFValueType.ARRAY:
                w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[-1])
            else:
                w.add_key_value(name, f.contents(), f.types[0])
        for t in reader.tensors:
            w.add_tensor(
                t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type
            )
        if extra_tensor:
            w.add_tensor(extra_tensor, np.zeros(4, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return dst

    with pytest.raises(UnsupportedEncoderGGUF, match="tensor cls.weight has no place") as e:
        import_gguf_encoder(rewrite(tmp_path / "x.gguf", extra_tensor="cls.weight"), tmp_path / "o1")
    assert str(tmp_path) not in str(e.value)
    with pytest.raises(UnsupportedEncoderGGUF, match="pooling_type 4 is not supported"):
        import_gguf_encoder(rewrite(tmp_path / "y.gguf", pooling=4), tmp_path / "o2")


@pytest.mark.parametrize("qtype,floor", [(QT.F16, 0.9999), (QT.Q8_0, 0.999)], ids=["F16", "Q8_0"])
def test_modernbert_gguf_matches_reference(tmp_path, qtype, floor):
    """llama.cpp's modern-bert GGUF (byte-level BPE vocabulary, [CLS] / [SEP] as BOS / EOS)."""
    from mlxollama.convert.create import check_gguf_architecture

    from ..support.tinyembed import write_modernbert_gguf

    check_gguf_architecture("modern-bert")  # admitted before the weights download
    hf = build_modernbert(tmp_path / "hf", seed=8, pooling="mean", bpe=True, mlm_prefix=True)
    path = write_modernbert_gguf(hf, tmp_path / "m.gguf", qtype)
    res = import_gguf_encoder(path, tmp_path / "out")
    assert (res.architecture, res.pooling, res.normalize, res.embedding_length) == ("modern-bert", "mean", True, 64)
    model = EncoderModel.load(tmp_path / "out")
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(hf / "tokenizer.json"))
    for text in MB_TEXTS + ["Ünïcödé text, emoji 🙂", "  spaces\tand\nlines  "]:
        assert model._tok_full.encode(text).ids == original.encode(text).ids, text
    got, _ = model.embed(MB_TEXTS, normalize=True)
    ref = np.stack([modernbert_reference(hf, original.encode(t).ids) for t in MB_TEXTS])
    cos = _cos(got, ref)
    assert cos.min() >= floor, cos


def test_transformers5_config_spellings():
    """transformers 5 writes the rope bases as rope_parameters per layer type (and ModernBERT's
    global layers as layer_types); both spellings read the same."""
    from mlxollama.engine.encoder import EncoderConfig
    from mlxollama.engine.encoder_gemma import GemmaEmbeddingConfig

    base = {
        "model_type": "gemma3_text",
        "use_bidirectional_attention": True,
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 6,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "head_dim": 4,
        "sliding_window": 512,
    }
    old = GemmaEmbeddingConfig.from_dict({**base, "rope_theta": 1e6, "rope_local_base_freq": 1e4})
    new = GemmaEmbeddingConfig.from_dict(
        {
            **base,
            "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        }
    )
    assert old == new and new.half_window == 256

    mb = {
        "model_type": "modernbert",
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
    }
    a = EncoderConfig.from_dict(
        {**mb, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "global_attn_every_n_layers": 3}
    )
    b = EncoderConfig.from_dict(
        {
            **mb,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        }
    )
    assert a == b and a.local_half_window == 64
